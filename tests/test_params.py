"""params.yaml has one schema: typos, wrong types, out-of-range values and broken cross-field
rules are each one line naming the parameter; numbers written as strings read as numbers."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import yaml

from tests.conftest import ROOT, make_project
from vitlab.core import config
from vitlab.core.errors import VitlabError

DEFAULT = yaml.safe_load((ROOT / "params.yaml").read_text())


def changed(path: str, value, base: dict = DEFAULT) -> dict:
    p = copy.deepcopy(base)
    *parents, leaf = path.split(".")
    node = p
    for k in parents:
        node = node[k]
    if value is KeyError:
        del node[leaf]
    else:
        node[leaf] = value
    return p


def test_the_default_is_valid():
    p = config.validate(DEFAULT)
    assert list(p.models) == ["B_16", "B_32", "L_16"]


def test_a_number_written_as_a_string_is_the_number_meant():
    # PyYAML reads `1e-3` (no dot) as the string "1e-3"
    assert yaml.safe_load("lr: 1e-3")["lr"] == "1e-3"
    assert config.validate(changed("train.lr", "1e-3")).train.lr == 0.001


BAD = [
    ("train.epoch", 30, "params.yaml: train.epoch is not a parameter (a typo?)"),
    ("train.epochs", KeyError, "params.yaml: train.epochs is missing"),
    ("train.lr", "fast", "params.yaml: train.lr: Input should be a valid number"),
    ("train.lr", -0.1, "params.yaml: train.lr: Input should be greater than 0"),
    ("train.optimizer", "adam", "params.yaml: train.optimizer: Input should be 'sgd' or 'adamw'"),
    ("train.keep_top_k", 2, "params.yaml: train.keep_top_k: Input should be greater than or equal"),
    ("select.k", 4, "params.yaml: select.k (4) exceeds train.keep_top_k (3) of model B_16"),
    ("train.batch_size", 12.5, "params.yaml: train.batch_size: Input should be a valid integer"),
    ("maps.methods", ["rollout", "saliency"], "params.yaml: maps.methods.1: Input should be"),
    ("runtime.amp", "fp16", "params.yaml: runtime.amp: Input should be 'auto', 'bf16' or 'fp32'"),
    ("data.source", "imagenet", "params.yaml: data.source: Input should be 'synthetic'"),
    ("captions.model.heads", 3, "params.yaml: captions.model: d_model 64 is not a multiple of"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "value", "line"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_parameter_is_one_line_naming_it(path, value, line):
    with pytest.raises(VitlabError) as e:
        config.validate(changed(path, value))
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(line), message


def test_a_model_override_is_validated_with_the_shared_section():
    p = changed("models.B_16", {**DEFAULT["models"]["B_16"], "train": {"keep_top_k": 2}})
    with pytest.raises(VitlabError, match=r"^params.yaml: models.B_16.train.keep_top_k: .* 3"):
        config.validate(p)
    p = changed("models.B_16", {**DEFAULT["models"]["B_16"], "train": {"lr": "1e-3"}})
    assert config.validate(p).train_for("B_16").lr == 1e-3
    # every train.* key, and only those, can be overridden per model
    assert config.TrainOverrides.model_fields.keys() == config.Train.model_fields.keys()
    p = changed("models.B_16", {**DEFAULT["models"]["B_16"], "train": {"epochs": 3}})
    assert config.validate(p).train_for("B_16").epochs == 3
    assert config.validate(p).train_for("B_32").epochs == DEFAULT["train"]["epochs"]


@pytest.mark.slow
def test_a_stage_fed_a_typo_exits_with_its_one_line(tmp_path):
    root = make_project(tmp_path)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"]["epoch"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "stages.fetch"], cwd=root,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: params.yaml: train.epoch is not a parameter (a typo?); check the keys of train "
        "in the repository's params.yaml"
    ]
    assert not (root / "data" / "raw").exists()
