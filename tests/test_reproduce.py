"""recipes/reproduce_cifar10.py: the --quick smoke run end to end on digits, resuming, tables and errors."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from nullspace_hf.data import digits_dataset
from nullspace_hf.evaluation import RobustnessReport

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.fixture(scope="module")
def recipe():
    sys.path.insert(0, str(RECIPES))
    try:
        spec = importlib.util.spec_from_file_location("reproduce_cifar10", RECIPES / "reproduce_cifar10.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("reproduce_cifar10", None)
        sys.path.remove(str(RECIPES))


@pytest.fixture(scope="module")
def parquet_data(tmp_path_factory):
    """Digits as parquet files with CIFAR-10's column names (img, label)."""
    root = tmp_path_factory.mktemp("cifar-like")
    data = digits_dataset().rename_column("image", "img")
    data["train"].select(range(300)).to_parquet(str(root / "train.parquet"))
    data["test"].select(range(60)).to_parquet(str(root / "test.parquet"))
    return root


def _args(recipe, root: Path, output: Path, *extra: str):
    from transformers import HfArgumentParser

    argv = ["--quick", "--train_file", str(root / "train.parquet"), "--test_file", str(root / "test.parquet"),
            "--output_dir", str(output), *extra]
    (args,) = HfArgumentParser(recipe.ReproduceArguments).parse_args_into_dataclasses(argv)
    return args


@pytest.mark.slow
def test_quick_run_writes_every_table_and_figure_and_resumes(recipe, parquet_data, tmp_path, monkeypatch):
    output = tmp_path / "out"
    summary = recipe.main(_args(recipe, parquet_data, output))
    report = output / "report"
    for name in ("results.json", "results_tables.md", "fig3_learned_vs_permuted.png", "fig4_rounds.png",
                 "fig5_scaling_and_combination.png"):
        assert (report / name).is_file() and (report / name).stat().st_size > 0, name
    tables = (report / "results_tables.md").read_text()
    for label in recipe.METHOD_LABELS.values():
        assert label in tables
    assert "| 0.1 | nullspace |" in tables and "| 0.1 | random |" in tables
    expected_runs = {spec.name for spec in recipe.plan_runs(_args(recipe, parquet_data, output))}
    assert set(summary["runs"]) == expected_runs
    for name, metrics in summary["runs"].items():
        assert 0 <= metrics["clean"] <= 100 and 0 <= metrics["corruption"] <= 100, name
        assert not math.isnan(metrics["pgd"]), name
    nullspace = json.loads((output / "runs" / "nullspace-eps0.03-seed0" / "run_results.json").read_text())
    assert [r["step"] for r in nullspace["rounds"]] == [0, 2, 4]
    assert len(nullspace["noise_history"]) == 2
    assert (output / "runs" / "madry-eps0.03-seed0" / "model.safetensors").is_file()
    assert len(summary["analysis"]["fig5"]["grid"]) == 3
    assert (output / "analysis_fig3.json").is_file() and (output / "analysis_fig5.json").is_file()

    def refuse(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(recipe, "finetune_and_evaluate", refuse)
    monkeypatch.setattr(recipe, "pretrain", refuse)
    again = recipe.main(_args(recipe, parquet_data, output))
    assert again["runs"] == summary["runs"]

    monkeypatch.setattr(recipe, "measure_fig3", refuse)
    monkeypatch.setattr(recipe, "measure_fig5", refuse)
    tables_only = recipe.main(_args(recipe, parquet_data, output, "--analysis", "false", "--report_dir",
                                    str(tmp_path / "tables_only")))
    assert tables_only["runs"] == summary["runs"] and tables_only["analysis"] == {}
    assert sorted(path.name for path in (tmp_path / "tables_only").iterdir()) == [
        "fig4_rounds.png", "results.json", "results_tables.md"]


def test_plan_has_every_method_seed_and_ablation(recipe, parquet_data, tmp_path):
    args = _args(recipe, parquet_data, tmp_path, "--seeds", "0,1", "--ablation_eps", "0.05,0.1")
    runs = recipe.plan_runs(args)
    assert len(runs) == len(recipe.METHODS) * 2 + 2 * 2 * 2
    assert len({run.name for run in runs}) == len(runs)
    assert {run.eps for run in runs if run.method in ("madry", "trades", "vanilla")} == {0.03}


def _report(clean: float, attacks: dict | None = None, corruptions: dict | None = None) -> dict:
    """A report as the recipe caches it (``RobustnessReport.to_dict()``)."""
    return RobustnessReport(model="m", dataset="d", num_samples=10, clean_accuracy=clean, attacks=attacks or {},
                            corruptions=corruptions or {}).to_dict()


def test_tables_aggregate_seeds_and_relative_ce(recipe):
    reference = _report(50.0, corruptions={"fog": {1: 60.0, 2: 40.0}})
    better = _report(52.0, {"fgsm": {"accuracy": 30.0}}, {"fog": {1: 80.0, 2: 70.0}})
    assert recipe.relative_ce(reference, reference) == pytest.approx(100.0)
    assert recipe.relative_ce(better, reference) == pytest.approx(100 * (0.2 + 0.3) / (0.4 + 0.6))
    results = {f"run{seed}": {"method": "nullspace", "eps": 0.03, "seed": seed, "train_seconds": 10.0 + seed,
                              "report": better, "noise_history": [{"norm": 2.0 * (seed + 1), "steps": 5}]}
               for seed in range(3)}
    table = recipe.aggregate(results, reference)
    row = table["nullspace@0.03"]
    assert row["n"] == 3
    assert row["train_seconds"] == pytest.approx((11.0, 1.0))
    assert row["noise_norm"][0] == pytest.approx(4.0)
    assert recipe.mean_std([1.0]) == (1.0, 0.0)


def test_effects_are_differences_paired_by_seed(recipe):
    reference = _report(50.0, {"fgsm": {"accuracy": 20.0}})

    def report(clean, fgsm):
        return _report(clean, {"fgsm": {"accuracy": fgsm}})

    vanilla = {0: (51.0, 21.0), 1: (53.0, 25.0)}
    nullspace = {0: (52.0, 20.0), 1: (53.0, 28.0)}
    results = {f"{method}{seed}": {"method": method, "eps": 0.03, "seed": seed, "train_seconds": 1.0,
                                   "report": report(*values[seed])}
               for method, values in (("vanilla", vanilla), ("nullspace", nullspace)) for seed in (0, 1)}
    results["nullspace-other-eps"] = {**results["nullspace0"], "eps": 0.1, "report": report(99.0, 99.0)}
    effects = recipe.paired_differences(results, reference)
    versus_vanilla = effects["nullspace"]["vanilla"]
    assert versus_vanilla["n"] == 2
    assert versus_vanilla["clean"] == pytest.approx((0.5, math.sqrt(0.5)))  # differences +1, 0
    assert versus_vanilla["fgsm"] == pytest.approx((1.0, math.sqrt(8.0)))  # differences -1, +3
    assert effects["vanilla"]["pretrained"]["clean"] == pytest.approx((2.0, math.sqrt(2.0)))  # +1, +3
    assert "vanilla" not in effects["vanilla"]
    table = recipe.effect_table(effects, ["vanilla", "nullspace"])
    assert "| +1.00 ± 2.83 |" in table and table.count("\n| ") == 4


def test_paper_protocol_and_imagenet_normalization(recipe, parquet_data, tmp_path):
    args = _args(recipe, parquet_data, tmp_path, "--protocol", "paper", "--normalization", "imagenet",
                 "--finetune_steps", "6")
    assert args.learning_rate == pytest.approx(1e-5) and args.finetune_steps == 6  # a given flag wins
    config = recipe._training_config(recipe.RunSpec("vanilla", 0.03, 0), args, tmp_path / "run")
    assert config.noise_mode == "none" and config.learning_rate == pytest.approx(1e-5)
    for name, value in recipe.PAPER_AUGMENTATION.items():
        assert getattr(config, name) == pytest.approx(value), name
    plain = recipe._training_config(recipe.RunSpec("vanilla", 0.03, 0), _args(recipe, parquet_data, tmp_path),
                                    tmp_path / "run")
    assert plain.mixup_prob == 0 and plain.rand_augment_ops == 0 and plain.label_smoothing_factor == 0
    from transformers import ViTImageProcessor

    ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(tmp_path / "model")
    processor = recipe.load_processor(tmp_path / "model", args)
    assert processor.image_mean == list(recipe.IMAGENET_MEAN) and processor.image_std == list(recipe.IMAGENET_STD)
    processor = recipe.load_processor(tmp_path / "model", _args(recipe, parquet_data, tmp_path))
    assert list(processor.image_mean) == [0.5] * 3


def test_an_output_dir_refuses_results_of_another_experiment(recipe, parquet_data, tmp_path, monkeypatch):
    recipe.check_settings(_args(recipe, parquet_data, tmp_path))
    recipe.check_settings(_args(recipe, parquet_data, tmp_path, "--seeds", "0,1"))  # more seeds: same experiment
    with pytest.raises(ValueError, match="--protocol 'plain' \\(now 'paper'\\)"):
        recipe.check_settings(_args(recipe, parquet_data, tmp_path, "--protocol", "paper"))
    with pytest.raises(ValueError, match="--normalization"):
        recipe.check_settings(_args(recipe, parquet_data, tmp_path, "--normalization", "imagenet"))
    monkeypatch.chdir(parquet_data)  # the same data named from another folder is the same experiment
    recipe.check_settings(_args(recipe, Path("."), tmp_path))


@pytest.mark.slow
def test_quick_paper_protocol_run_fine_tunes_under_the_mismatch(recipe, parquet_data, tmp_path):
    output = tmp_path / "out"
    summary = recipe.main(_args(recipe, parquet_data, output, "--protocol", "paper", "--normalization", "imagenet",
                                "--pretrain_augment", "true", "--methods", "vanilla,nullspace_fast",
                                "--ablation_eps", "none", "--analysis", "false", "--seeds", "0,1"))
    assert set(summary["runs"]) == {f"{m}-eps0.03-seed{s}" for m in ("vanilla", "nullspace_fast") for s in (0, 1)}
    saved = json.loads((output / "runs" / "vanilla-eps0.03-seed0" / "preprocessor_config.json").read_text())
    assert saved["image_mean"] == list(recipe.IMAGENET_MEAN)  # fine-tuned and saved under the mismatch
    assert summary["effects"]["nullspace_fast"]["vanilla"]["n"] == 2
    assert "### Effect sizes" in (output / "report" / "results_tables.md").read_text()


def test_a_noise_variant_applies_to_every_noise_method_and_names_its_runs(recipe, parquet_data, tmp_path):
    """Issue 26: --noise_variant sets the variant on the nullspace runs and on their random-noise control alike, not
    on vanilla, and its runs are cached under their own names."""
    args = _args(recipe, parquet_data, tmp_path, "--noise_variant", "noise_train_scale=4, noisy_loss=ce+kl,"
                 "noise_bank_size=3,noise_random_scale=true", "--methods", "vanilla,random,nullspace_fast",
                 "--ablation_eps", "none")
    assert args.variant_settings == {"noise_train_scale": 4.0, "noisy_loss": "ce+kl", "noise_bank_size": 3,
                                     "noise_random_scale": True}
    runs = {run.method: run for run in recipe.plan_runs(args)}
    assert runs["vanilla"].name == "vanilla-eps0.03-seed0"
    assert runs["random"].name.endswith("-noise_train_scale4.0-noisy_lossce_kl-noise_bank_size3-noise_random_scaleTrue")
    for method in ("random", "nullspace_fast"):
        config = recipe._training_config(runs[method], args, tmp_path / "run")
        assert (config.noise_train_scale, config.noisy_loss, config.noise_bank_size, config.noise_random_scale) == \
            (4.0, "ce+kl", 3, True)
    vanilla = recipe._training_config(runs["vanilla"], args, tmp_path / "run")
    assert vanilla.noise_mode == "none" and vanilla.noise_train_scale == 1.0


@pytest.mark.parametrize(("extra", "message"), [
    (["--noise_variant", "noise_lr=3"], "give name=value with a name from noise_train_scale"),
    (["--noise_variant", "noise_bank_size=many"], "noise_bank_size takes a value of type int"),
    (["--methods", "vanilla,mixup"], "Unknown methods"),
    (["--protocol", "paper", "--methods", "vanilla,madry"], "drop madry"),
    (["--protocol", "authors"], "--protocol"),
    (["--pretrained_dir", "/nonexistent/model"], "holds no saved model"),
    (["--train_file", "/nonexistent/train.parquet"], "does not exist"),
])
def test_bad_arguments_are_one_clear_error(recipe, parquet_data, tmp_path, capsys, extra, message):
    argv = ["--quick", "--train_file", str(parquet_data / "train.parquet"), "--test_file",
            str(parquet_data / "test.parquet"), "--output_dir", str(tmp_path), *extra]
    assert recipe.cli(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and message in error[0]


def test_image_folders_load_like_parquet(recipe, parquet_data, tmp_path):
    """--train_file / --test_file also take image folders (one sub-folder per class)."""
    data = digits_dataset()
    for split, count in (("train", 30), ("test", 10)):
        for index, row in enumerate(data[split].select(range(count))):
            folder = tmp_path / split / str(row["label"])
            folder.mkdir(parents=True, exist_ok=True)
            row["image"].save(folder / f"{index}.png")
    args = _args(recipe, parquet_data, tmp_path / "out", "--train_file", str(tmp_path / "train"),
                 "--test_file", str(tmp_path / "test"), "--image_column", "image")
    train, test, names = recipe.load_splits(args)
    assert (len(train), len(test)) == (30, 10)
    assert set(train["label"]) <= set(range(len(names)))


def test_a_later_invocation_adds_the_autoattack_column_to_cached_reports(recipe, parquet_data, tmp_path):
    from datasets import load_dataset
    from transformers import ViTImageProcessor

    from .helpers import make_tiny_model

    args = _args(recipe, parquet_data, tmp_path / "out", "--eval_attacks", "fgsm,autoattack")
    model, processor = make_tiny_model(num_labels=10), ViTImageProcessor(size={"height": 32, "width": 32})
    test = load_dataset("parquet", data_files=str(parquet_data / "test.parquet"))["train"].select(range(6))
    cached = recipe._robustness(model, processor, test, args, severities=[1], attacks=("fgsm",))
    corruptions = json.dumps(cached["corruptions"])
    assert recipe.add_missing_attacks(cached, lambda: model, processor, test, args)
    assert list(cached["attacks"]) == ["fgsm", "autoattack"] and json.dumps(cached["corruptions"]) == corruptions
    assert cached["summary"]["autoattack"] == cached["attacks"]["autoattack"]["accuracy"] <= cached["summary"]["clean"]
    assert cached["summary_details"]["autoattack"]["threat_model"] == "Linf"
    assert recipe.run_metrics({"report": cached, "train_seconds": 1.0}, cached)["autoattack"] == cached["summary"][
        "autoattack"]

    def not_again():
        raise AssertionError("evaluated again")

    assert not recipe.add_missing_attacks(cached, not_again, processor, test, args)
    assert "| AutoAttack |" in recipe.markdown_tables({}, recipe.run_metrics({"report": cached, "train_seconds": 1.0},
                                                                              cached), [], [0.03])


def test_the_variant_table_pairs_each_variant_with_vanilla_and_its_random_control(tmp_path):
    """recipes/variant_effects.py: nullspace − vanilla and nullspace − random are differences paired by seed, with
    t = mean / (sd / √n)."""
    sys.path.insert(0, str(RECIPES))
    try:
        import variant_effects
    finally:
        sys.path.remove(str(RECIPES))
    runs = {}
    for seed, (vanilla, random, nullspace) in enumerate([(50.0, 51.0, 52.0), (60.0, 62.0, 63.0), (55.0, 57.0, 56.0)]):
        for method, value in (("vanilla", vanilla), ("random", random), ("nullspace_fast", nullspace)):
            tag = "" if method == "vanilla" else "-noise_train_scale4.0"
            runs[f"{method}-eps0.03-seed{seed}{tag}"] = {
                "clean": value, "fgsm": value, "pgd": value, "corruption": value, "train_seconds": 1.0,
                "noise_norm": 2.0}
    (tmp_path / "results.json").write_text(json.dumps({"arguments": {"noise_variant": "noise_train_scale=4"},
                                                       "runs": runs}))
    table = variant_effects.table([tmp_path])
    nullspace_row = next(line for line in table.splitlines() if "nullspace × 3" in line)
    # nullspace − vanilla: +2, +3, +1 → mean 2, sd 1, t = 2 / (1 / √3) = 3.46; nullspace − random: +1, +1, −1
    assert "+2.00 ± 1.00 (+3.5)" in nullspace_row and "+0.33 ± 1.15 (+0.5)" in nullspace_row
    assert "`noise_train_scale=4`" in nullspace_row
