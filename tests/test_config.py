"""Configs: `--config=file.py:arg`, dotted overrides, strict errors before any work, resolved JSON."""

import json
import os
import subprocess
import sys

import pytest

from c2a_jax.config import ConfigError, apply_override, load_config_file, parse_command_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VLM = os.path.join(ROOT, "configs", "vlm", "tiny.py")
CONFIGS = [
    os.path.join(ROOT, "configs", d, f)
    for d in ("vlm", "dp", "eval")
    for f in sorted(os.listdir(os.path.join(ROOT, "configs", d)))
    if f.endswith(".py")
]


@pytest.mark.parametrize("path", CONFIGS, ids=[os.path.relpath(p, ROOT) for p in CONFIGS])
def test_every_config_loads_and_documents_its_command(path):
    config = load_config_file(path)
    assert "workdir" in config
    with open(path) as f:
        source = f.read()
    assert "Command:" in source and "--config=configs/" in source


def test_override_sets_typed_values():
    config = load_config_file(VLM + ":level=level1,image_size=128")
    assert config.data.code_level == "level1" and config.data.image_size == 128
    apply_override(config, "train.batch_size", "4")
    apply_override(config, "train.learning_rate", "3")  # an int string for a float field
    apply_override(config, "model.remat", "true")
    assert config.train.batch_size == 4
    assert config.train.learning_rate == 3.0 and isinstance(config.train.learning_rate, float)
    assert config.model.remat is True


def test_tuple_overrides_take_literals_and_comma_lists():
    config = load_config_file(os.path.join(ROOT, "configs", "eval", "default.py"))
    apply_override(config, "tasks", "PlaceNextTo,Push")
    assert config.tasks == ("PlaceNextTo", "Push")
    dp = load_config_file(os.path.join(ROOT, "configs", "dp", "tiny.py"))
    apply_override(dp, "model.down_dims", "(16, 32)")
    assert dp.model.down_dims == (16, 32)


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("train.batchsize", "4", r"unknown config key 'train.batchsize'; did you mean train.batch_size"),
        ("trian.batch_size", "4", r"unknown config key 'trian.batch_size'"),
        ("train.batch_size.x", "4", r"unknown config key 'train.batch_size.x'"),
        ("train.batch_size", "4.5", r"--config.train.batch_size='4.5': expected a value of type int"),
        ("train.batch_size", "abc", r"--config.train.batch_size='abc': expected a value of type int"),
        ("train.learning_rate", "fast", r"--config.train.learning_rate='fast': expected a value of type float"),
        ("model.remat", "maybe", r"--config.model.remat='maybe': expected a value of type bool"),
        ("train", "3", r"--config.train is a group of settings"),
    ],
)
def test_override_errors_name_the_key(key, value, message):
    config = load_config_file(VLM)
    with pytest.raises(ConfigError, match=message):
        apply_override(config, key, value)


def test_bad_config_argument_and_missing_file():
    with pytest.raises(ConfigError, match="unknown config argument 'colour'"):
        load_config_file(VLM + ":colour=red")
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file("configs/nope.py")


def test_command_line_fails_before_any_work(tmp_path, capsys):
    workdir = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        parse_command_line([f"--config={VLM}", f"--config.workdir={workdir}", "--config.train.stepz=3"], "doc")
    assert exit_info.value.code == 2
    assert "unknown config key 'train.stepz'" in capsys.readouterr().err
    assert not workdir.exists()


def test_required_placeholder_must_be_set(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text(
        "import ml_collections\nfrom c2a_jax.config import placeholder\n"
        "def get_config():\n    c = ml_collections.ConfigDict()\n    c.workdir = placeholder(str)\n    c.n = 1\n    return c\n"
    )
    with pytest.raises(SystemExit):
        parse_command_line([f"--config={path}"], "doc")
    config, _ = parse_command_line([f"--config={path}", f"--config.workdir={tmp_path}"], "doc")
    assert config.workdir == str(tmp_path)


def test_train_vlm_answers_help_and_names_a_missing_dataset(tmp_path):
    help_out = subprocess.run([sys.executable, "train_vlm.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
    assert help_out.returncode == 0 and "--config" in help_out.stdout and "dataset_dir" in help_out.stdout
    missing = tmp_path / "no_dataset"
    run = subprocess.run([sys.executable, "train_vlm.py", f"--config.workdir={tmp_path / 'w'}",
                          f"--config.data.dataset_dir={missing}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 2 and str(missing) in run.stderr and "Traceback" not in run.stderr
    assert json.loads((tmp_path / "w" / "config.json").read_text())["data"]["dataset_dir"] == str(missing)


@pytest.mark.parametrize("script", ["train_dp.py", "evaluate.py"])
def test_entry_points_answer_help_and_write_the_resolved_config(script, tmp_path):
    help_out = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert help_out.returncode == 0, help_out.stderr
    assert "--config" in help_out.stdout and "workdir" in help_out.stdout

    workdir = tmp_path / "w"
    run = subprocess.run(
        [
            sys.executable,
            script,
            f"--config.workdir={workdir}",
            "--config.seed=7" if script != "evaluate.py" else "--config.num_seeds=7",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # nothing to work on (no dataset / no checkpoint): one line naming what is missing, exit 2
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("error: ") and "Traceback" not in run.stderr
    assert ("dataset" in run.stderr) if script == "train_dp.py" else ("vlm_checkpoint" in run.stderr)
    resolved = json.loads((workdir / "config.json").read_text())
    assert resolved["workdir"] == str(workdir)
    assert resolved.get("seed", resolved.get("num_seeds")) == 7

    bad = subprocess.run(
        [sys.executable, script, "--config.no_such_key=1"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "unknown config key 'no_such_key'" in bad.stderr
