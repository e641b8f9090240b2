"""Config validation: defaults, exact key paths in errors, path resolution, hashing, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from eraserd.cli import main
from eraserd.config import (
    BUILTIN_DIGITS,
    BUILTIN_LITE0,
    Config,
    config_from_dict,
    load_config,
)
from eraserd.errors import ConfigError

pytestmark = pytest.mark.pure  # no torch: part of `make test-fast`

REPO = Path(__file__).parent.parent


def test_empty_dict_gives_documented_defaults():
    cfg = config_from_dict({})
    assert cfg.state_dir == Path("state")
    assert cfg.seed == 0
    assert cfg.data.source == BUILTIN_DIGITS
    assert cfg.data.test_fraction == 0.2
    assert cfg.data.classes is None
    assert cfg.backbone.name == "efficientnet_lite0"
    assert cfg.backbone.weights == BUILTIN_LITE0
    assert cfg.backbone.image_size == 64
    assert cfg.backbone.mean == (0.485, 0.456, 0.406)
    assert cfg.backbone.std == (0.229, 0.224, 0.225)
    assert cfg.clustering.sample_size == 1000
    assert cfg.clustering.distance_threshold == 17.4
    assert cfg.clustering.n_clusters is None
    assert (cfg.prompt.width, cfg.prompt.init_std) == (8, 0.01)
    t = cfg.training
    assert (t.epochs, t.batch_size, t.prompt_lr, t.head_lr) == (12, 32, 1.0, 0.05)
    assert (t.momentum, t.weight_decay, t.warmup_epochs) == (0.9, 0.0, 1.0)
    assert (t.augment.crop_padding, t.augment.hflip) == (4, False)
    assert (cfg.runtime.device, cfg.runtime.num_threads, cfg.runtime.deterministic) == (
        "cpu",
        2,
        True,
    )
    assert cfg == Config()


def test_example_config_loads_and_resolves_state_dir():
    path = REPO / "config.example.yaml"
    cfg = load_config(path)
    assert cfg.state_dir == (REPO / "state").resolve()
    assert cfg.state_dir.is_absolute()
    assert cfg.data.source == BUILTIN_DIGITS
    assert cfg.backbone.weights == BUILTIN_LITE0
    assert cfg.clustering.distance_threshold == 17.4
    assert cfg.training.warmup_epochs == 1.0
    assert isinstance(cfg.training.warmup_epochs, float)


def test_the_lfw_example_config_loads():
    cfg = load_config(REPO / "examples" / "lfw.yaml")
    assert cfg.data.source == "builtin:lfw"
    assert cfg.state_dir == (REPO / "state-lfw").resolve()
    assert cfg.clustering.n_clusters == 8 and cfg.clustering.distance_threshold is None


@pytest.mark.parametrize(
    ("raw", "prefix"),
    [
        ({"bogus": 1}, "bogus: unknown key"),
        ({"training": {"epochs": "ten"}}, "training.epochs: expected an integer, got 'ten'"),
        ({"training": {"epochs": True}}, "training.epochs: expected an integer"),
        ({"runtime": {"deterministic": "yes"}}, "runtime.deterministic: expected a boolean"),
        ({"backbone": {"mean": [0.1, 0.2]}}, "backbone.mean: expected a list of 3 values"),
        ({"training": {"epochs": 0}}, "training.epochs: "),
        ({"data": {"test_fraction": 1.0}}, "data.test_fraction: must be in [0, 1)"),
        ({"prompt": {"width": 32}, "backbone": {"image_size": 64}}, "prompt.width: "),
        ({"training": []}, "training: expected a mapping"),
        ({"runtime": {"precision": "fp16"}}, "runtime.precision: must be one of"),
        ({"executor": {"pack_clusters": 0}}, "executor.pack_clusters: must be null or at least"),
        ({"executor": {"pack_images": "x"}}, "executor.pack_images: expected an integer"),
        ({"daemon": {"rate_horizon_s": 0}}, "daemon.rate_horizon_s: must be positive"),
        (
            {"daemon": {"rate_horizon_s": 7200, "request_retention_s": 3600}},
            "daemon.request_retention_s: must be at least rate_horizon_s",
        ),
        ({"runtime": {"feature_batch": 0}}, "runtime.feature_batch: must be between 1 and"),
        ({"daemon": {"max_attempts": 3}}, "daemon.max_attempts: removed; a failed batch is"),
        ({"daemon": {"withdraw_after_attempts": 0}}, "daemon.withdraw_after_attempts: must be"),
        (
            {"daemon": {"retry_backoff_s": 10, "retry_backoff_max_s": 5}},
            "daemon.retry_backoff_max_s: must be at least retry_backoff_s",
        ),
    ],
)
def test_errors_start_with_key_path(raw, prefix):
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    assert str(info.value).startswith(prefix), str(info.value)


def test_unknown_nested_key_lists_allowed_keys():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"training": {"augment": {"flip": True}}})
    msg = str(info.value)
    assert msg.startswith("training.augment.flip: unknown key")
    assert "allowed: crop_padding, hflip" in msg


def test_prompt_width_just_fits():
    assert config_from_dict({"prompt": {"width": 31}}).prompt.width == 31


@pytest.mark.parametrize(
    "clustering",
    [
        {"distance_threshold": 5.0, "n_clusters": 3},
        {"distance_threshold": None, "n_clusters": None},
        {"distance_threshold": None},
    ],
)
def test_threshold_and_n_clusters_are_exclusive(clustering):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"clustering": clustering})
    msg = str(info.value)
    assert msg.startswith("clustering")
    assert "set exactly one of distance_threshold and n_clusters" in msg


def test_n_clusters_alone_is_accepted():
    cfg = config_from_dict({"clustering": {"distance_threshold": None, "n_clusters": 4}})
    assert (cfg.clustering.distance_threshold, cfg.clustering.n_clusters) == (None, 4)


@pytest.mark.parametrize(
    "clustering, message",
    [
        ({"max_cluster_share": 0}, "clustering.max_cluster_share: must be in (0, 1] or null"),
        ({"max_cluster_share": 1.5}, "clustering.max_cluster_share: must be in (0, 1] or null"),
        ({"max_cluster_share": "small"}, "clustering.max_cluster_share: expected a number"),
        (
            {"max_cluster_share": 0.01, "sample_size": 100},
            "clustering.max_cluster_share: must allow at least 2 clustering-sample points",
        ),
    ],
)
def test_cluster_cap_errors_name_the_key(clustering, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict({"clustering": clustering})
    assert str(info.value).startswith(message)


def test_cluster_cap_is_accepted():
    cfg = config_from_dict({"clustering": {"max_cluster_share": 0.05, "sample_size": 400}})
    assert cfg.clustering.max_cluster_share == 0.05


def test_load_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="config file not found") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_load_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("training: {epochs: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: not valid YAML")


def test_load_list_top_level(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: the top level must be a mapping"


def test_load_empty_file_gives_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    cfg = load_config(path)
    assert cfg.state_dir == (tmp_path / "state").resolve()
    assert cfg.training == Config().training


def test_relative_paths_resolve_against_config_dir(tmp_path):
    sub = tmp_path / "conf"
    sub.mkdir()
    path = sub / "c.yaml"
    path.write_text(
        "state_dir: st\ndata: {source: data/manifest.csv}\n"
        "backbone: {weights: w/lite0.safetensors}\n"
    )
    cfg = load_config(path)
    assert cfg.state_dir == (sub / "st").resolve()
    assert cfg.data.source == str(sub.resolve() / "data" / "manifest.csv")
    assert cfg.backbone.weights == str(sub.resolve() / "w" / "lite0.safetensors")


def test_absolute_and_builtin_paths_untouched(tmp_path):
    abs_src = tmp_path / "elsewhere" / "m.csv"
    raw = {"data": {"source": str(abs_src)}, "backbone": {"weights": BUILTIN_LITE0}}
    cfg = config_from_dict(raw, base_dir=tmp_path / "base")
    assert cfg.data.source == str(abs_src)
    assert cfg.backbone.weights == BUILTIN_LITE0
    cfg = config_from_dict(
        {"data": {"source": BUILTIN_DIGITS}, "backbone": {"weights": None}}, base_dir=tmp_path
    )
    assert cfg.data.source == BUILTIN_DIGITS
    assert cfg.backbone.weights is None


def test_to_dict_round_trips():
    cfg = config_from_dict(
        {
            "seed": 5,
            "data": {"source": "/abs/data", "classes": ["cat", "dog"]},
            "backbone": {"mean": [0.5, 0.5, 0.5], "image_size": 32},
            "clustering": {"distance_threshold": None, "n_clusters": 3},
            "prompt": {"width": 4},
            "training": {"epochs": 3, "augment": {"hflip": True}},
            "runtime": {"device": "cuda:1", "num_threads": 4},
        }
    )
    plain = cfg.to_dict()
    assert plain["data"]["classes"] == ["cat", "dog"]
    assert plain["state_dir"] == "state"
    again = config_from_dict(plain)
    assert again == cfg
    assert again.data.classes == ("cat", "dog")


def test_section_hash_tracks_only_named_sections():
    base = config_from_dict({})
    h = base.section_hash("training")
    assert len(h) == 64
    assert config_from_dict({}).section_hash("training") == h
    assert config_from_dict({"training": {"epochs": 13}}).section_hash("training") != h
    nested = config_from_dict({"training": {"augment": {"hflip": True}}})
    assert nested.section_hash("training") != h
    other = config_from_dict({"seed": 9, "prompt": {"width": 2}, "runtime": {"num_threads": 1}})
    assert other.section_hash("training") == h
    assert other.section_hash("training", "prompt") != base.section_hash("training", "prompt")


def test_cli_reports_config_error_in_one_line(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  augment:\n    flip: true\n")
    result = CliRunner().invoke(main, ["info", "--config", str(path)])
    assert result.exit_code == 2
    # click >= 8.2 keeps stderr separate (result.stderr) and also mixes it into output.
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("eraserd: error: training.augment.flip: unknown key")


def test_mixed_type_unknown_keys_are_a_config_error():
    # YAML 1.1 reads `yes:` as the key True and `1:` as an int.
    with pytest.raises(ConfigError):
        config_from_dict({True: 1, "bogus": 2})


def test_bad_value_names_key_when_section_has_several_keys():
    with pytest.raises(ConfigError) as info:
        config_from_dict({"data": {"source": "x", "test_fraction": 1.0}})
    assert str(info.value).startswith("data.test_fraction: ")
