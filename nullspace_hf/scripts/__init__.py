"""The jobs, one module each, every one built on the pattern of TRL's scripts.

* ``make_parser(subparsers=None)``: the job's parser; given the ``nullspace-hf`` sub-parsers, the job
  registers itself there under its ``NAME``;
* ``main(...)``: runs the job on what the parser gives (the dataclasses of a training job, as TRL's
  scripts take them; the namespace of the others);
* ``cli(argv)``: parse and run in this process, a user error being one line and exit status 2, which is
  what ``python -m nullspace_hf.scripts.<job>`` does.

Jobs: :mod:`.finetune` and :mod:`.pretrain` (started through ``accelerate launch`` by ``nullspace-hf``),
:mod:`.evaluate`, :mod:`.inspect`, :mod:`.watermark`. Flags are ``--snake_case`` and lists
comma-separated everywhere; every training job takes ``--config FILE``.
"""
