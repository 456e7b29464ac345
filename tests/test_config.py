"""Config: defaults, YAML + `--set` overrides and their precedence, unknown keys (with the
closest suggestion), type and choice checks, the stable config hash, and the YAML round trip."""

import hashlib
import json

import pytest
import yaml

from xmodal.config import (LATE_KEYS, NON_IDENTITY_KEYS, Config, all_keys, config_hash, flatten,
                           from_dict, load_config, parse_override, to_yaml)
from xmodal.errors import UserError


def write(tmp_path, data, name="c.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_defaults_without_file_or_overrides():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg == Config()
    assert cfg.train.finetune == "all" and cfg.body.name == "minilm"
    assert cfg.task.val_fraction == 0.2 and cfg.task.split_seed == 0


def test_dotted_overrides_are_parsed_as_yaml_scalars():
    cfg = load_config(overrides=["train.lr=1e-3", "body.num_layers=2", "train.clip=null",
                                 "body.pretrained=false", "task.name=npz:/tmp/my data.npz",
                                 "task.options.resolution=8", "train.warmup_epochs=1",
                                 "embedder.seq_len=12"])
    assert cfg.train.lr == pytest.approx(1e-3) and isinstance(cfg.train.lr, float)
    assert cfg.body.num_layers == 2 and isinstance(cfg.body.num_layers, int)
    assert cfg.train.clip is None
    assert cfg.body.pretrained is False
    assert cfg.task.name == "npz:/tmp/my data.npz"
    assert cfg.task.options == {"resolution": 8}
    assert cfg.train.warmup_epochs == 1.0 and isinstance(cfg.train.warmup_epochs, float)
    assert cfg.embedder.seq_len == 12
    # untouched keys keep their defaults
    assert cfg.train.epochs == Config().train.epochs


def test_text_keys_keep_numeric_looking_values_as_text():
    cfg = load_config(overrides=["run.out=2024", "run.name=1e5", "task.name=123", "run.name=007"])
    assert cfg.run.out == "2024" and cfg.task.name == "123" and cfg.run.name == "007"
    assert load_config(overrides=["run.name=null"]).run.name is None
    assert parse_override("train.lr=1e-4") == ("train.lr", 1e-4)


def test_dict_overrides_and_later_override_wins():
    cfg = load_config(overrides={"train.epochs": 7, "run.seed": 3})
    assert (cfg.train.epochs, cfg.run.seed) == (7, 3)
    cfg = load_config(overrides=["train.epochs=2", "train.epochs=5"])
    assert cfg.train.epochs == 5


def test_precedence_defaults_base_file_overrides(tmp_path):
    path = write(tmp_path, {"train": {"epochs": 5, "batch_size": 8},
                            "task": {"name": "digits", "options": {"a": 1}}})
    base = {"train": {"epochs": 9, "lr": 0.5}, "run": {"seed": 4}, "task": {"options": {"b": 2}}}
    cfg = load_config(path, ["train.batch_size=4"], base=base)
    assert cfg.train.epochs == 5          # file over base
    assert cfg.train.lr == 0.5            # base over defaults
    assert cfg.run.seed == 4
    assert cfg.train.batch_size == 4      # override over file
    assert cfg.task.name == "digits"
    assert cfg.task.options == {"a": 1}   # task options are replaced as a whole, not merged


@pytest.mark.parametrize("override, suggestion", [
    ("train.lrr=1", "train.lr"),
    ("body.num_layer=1", "body.num_layers"),
    ("trian.lr=1", "train"),
    ("embedder.seqlen=8", "embedder.seq_len"),
])
def test_unknown_key_suggests_the_closest(override, suggestion):
    with pytest.raises(UserError) as err:
        load_config(overrides=[override])
    msg = str(err.value)
    assert "unknown config key" in msg
    assert f"did you mean '{suggestion}'" in msg


def test_unknown_key_in_yaml_file(tmp_path):
    path = write(tmp_path, {"train": {"batchsize": 8}})
    with pytest.raises(UserError, match=r"unknown config key 'train.batchsize'.*'train.batch_size'"):
        load_config(path)


@pytest.mark.parametrize("override, key", [
    ("train.epochs=abc", "train.epochs"),
    ("train.epochs=1.5", "train.epochs"),
    ("train.epochs=true", "train.epochs"),     # a bool is not an int
    ("train.lr=fast", "train.lr"),
    ("body.pretrained=maybe", "body.pretrained"),
    ("task.options=3", "task.options"),
    ("run.seed=[1, 2]", "run.seed"),
])
def test_wrong_value_type_is_a_user_error(override, key):
    with pytest.raises(UserError) as err:
        load_config(overrides=[override])
    assert f"'{key}'" in str(err.value) and "must be" in str(err.value)


@pytest.mark.parametrize("override, match", [
    ("train.finetune=everything", "train.finetune' must be one of"),
    ("train.schedule=step", "train.schedule' must be one of"),
    ("run.device=tpu", "run.device' must be auto, cpu, cuda or cuda:N"), ("run.device=cuda:x", "run.device' must be auto, cpu, cuda or cuda:N"),
    ("train.batch_size=0", "train.batch_size' must be >= 1"),
    ("train.accumulate=0", "train.accumulate' must be >= 1"),
    ("task.val_fraction=1.0", "val_fraction"),
    ("train.warmup_epochs=-1", "warmup_epochs"),
    ("train=5", "section 'train' must be a mapping"),
    ("train.lr", "key=value"),
])
def test_invalid_values_are_user_errors(override, match):
    with pytest.raises(UserError, match=match):
        load_config(overrides=[override])


@pytest.mark.parametrize("text, match", [
    ("train: [1, 2\n", "not valid YAML"),
    ("- 1\n- 2\n", "mapping at the top level"),
])
def test_bad_yaml_files(tmp_path, text, match):
    with pytest.raises(UserError, match=match):
        load_config(write(tmp_path, text))
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_config_hash_is_stable_and_tracks_identity_keys():
    a = load_config(overrides=["train.lr=0.001", "task.name=digits"])
    b = load_config(overrides={"task.name": "digits", "train.lr": 1e-3})
    h = config_hash(a)
    assert h == config_hash(b) == config_hash(a)
    assert len(h) == 10 and all(c in "0123456789abcdef" for c in h)
    # the hash is a pure function of the identity keys (no process state involved)
    flat = {k: v for k, v in flatten(a.to_dict()).items() if k not in NON_IDENTITY_KEYS
            and LATE_KEYS.get(k, object()) != v   # keys added later: left out at their default
            and k != "train.cache_frozen"}         # moot unless train.finetune=predictor-only
    expected = hashlib.sha256(json.dumps(flat, sort_keys=True, default=str).encode()).hexdigest()
    assert h == expected[:10]
    assert config_hash(a, length=16) == expected[:16]
    # where a run goes does not change what it is; what it computes does
    assert config_hash(load_config(overrides={"task.name": "digits", "train.lr": 1e-3,
                                              "run.out": "/elsewhere", "run.threads": 1})) == h
    for key, value in [("train.lr", 2e-3), ("run.seed", 1), ("body.num_layers", 1),
                       ("task.options", {"resolution": 8}), ("align.max_iter", 500)]:
        changed = load_config(overrides={"task.name": "digits", "train.lr": 1e-3, key: value})
        assert config_hash(changed) != h, key


def test_round_trip_through_yaml_and_dict(tmp_path):
    cfg = load_config(overrides=["task.name=darcy", "task.options={resolution: 8, n_train: 6}",
                                 "train.clip=null", "body.dropout=0.0", "run.name=r1",
                                 "train.finetune=layernorm", "align.proxy=digits"])
    path = tmp_path / "round.yaml"
    path.write_text(to_yaml(cfg))
    again = load_config(path)
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert from_dict(cfg.to_dict()) == cfg
    # every schema key appears in the dump
    dumped = flatten(yaml.safe_load(path.read_text()))
    assert set(dumped) == set(all_keys())


@pytest.mark.parametrize("override, message", [
    ("train.lr=nan", "finite"), ("align.eps=inf", "finite"), ("run.num_workers=-1", ">= 0")])
def test_non_finite_and_negative_values_are_rejected(override, message):
    with pytest.raises(UserError, match=message):
        load_config(overrides=[override])


def test_the_readmes_float_spelling_works_in_a_config_file(tmp_path):
    """YAML 1.1 reads `1e-4` as a string; the README writes learning rates that way."""
    path = tmp_path / "c.yaml"
    path.write_text("train: {lr: 1e-4, weight_decay: 5E-2}\nalign: {eps: 1.0e+0}\n")
    cfg = load_config(path)
    assert cfg.train.lr == 1e-4 and cfg.train.weight_decay == 0.05 and cfg.align.eps == 1.0
    path.write_text("run: {name: '1e-4'}\n")          # quoted: still a string
    assert load_config(path).run.name == "1e-4"


def test_a_repeated_key_is_refused_not_silently_replaced(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 0.001\n  epochs: 3\n  lr: 0.1\n")
    with pytest.raises(UserError, match=r"key 'lr' appears twice.*line 4"):
        load_config(path)
    path.write_text("a: &base {lr: 0.001}\ntrain: {<<: *base, epochs: 3}\n")   # merge keys: fine
    with pytest.raises(UserError, match="unknown config key 'a'"):
        load_config(path)


@pytest.mark.parametrize("key, value, match", [
    ("train.decay_epochs", -2, "must be > 0"), ("train.decay_epochs", 0, "must be > 0"),
    ("train.momentum", 2.0, r"in \[0, 1\)"), ("train.weight_decay", -0.1, ">= 0"),
    ("train.lora_rank", 0, ">= 1"), ("run.seed", 2 ** 70, "between 0 and 2147483647"),
    ("run.seed", -1, ">= 0")])
def test_values_that_would_be_ignored_or_wrong_are_refused(key, value, match):
    section, name = key.split(".")
    with pytest.raises(UserError, match=f"'{key}' must .*{match}|{match}"):
        from_dict({section: {name: value}})
