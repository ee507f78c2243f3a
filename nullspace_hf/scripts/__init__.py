"""Jobs that run from the installed package: ``nullspace-hf finetune`` (``accelerate launch -m nullspace_hf.scripts.finetune``)."""
