import pytest

from miningxr.config import Config, TileConfig, TrainConfig


def test_defaults_are_the_seed_projects():
    cfg = Config().train
    assert (cfg.tile_size, len(cfg.bands), cfg.base_filters, cfg.depth) == (64, 7, 64, 4)
    assert (cfg.dropout, cfg.learning_rate, cfg.batch_size, cfg.loss, cfg.pos_weight) == (
        0.1,
        1e-4,
        32,
        "combined",
        10.0,
    )


def test_a_toml_file_overrides_only_what_it_names(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[train]\nbase_filters = 16\nbands = ["red", "nir"]\n\n[predict]\noverlap = 8\n')
    cfg = Config.from_file(path)
    assert cfg.train.base_filters == 16 and cfg.train.bands == ("red", "nir")
    assert cfg.predict.overlap == 8 and cfg.train.depth == 4 and cfg.tiles == TileConfig()


def test_unknown_keys_and_sections_are_named():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['filters'\] in \[train\]"):
        Config.from_dict({"train": {"filters": 16}})
    with pytest.raises(ValueError, match=r"unknown config section\(s\) \['model'\]"):
        Config.from_dict({"model": {}})


@pytest.mark.parametrize("section", ["tiles", "train"])
def test_a_tile_size_in_one_section_applies_to_both(section):
    cfg = Config.from_dict({section: {"tile_size": 32}})
    assert cfg.tiles.tile_size == cfg.train.tile_size == 32


def test_two_different_tile_sizes_are_refused():
    with pytest.raises(ValueError, match="tile_size 64 and \\[train\\] tile_size 32 differ"):
        Config(train=TrainConfig(tile_size=32))


def test_an_unknown_learning_rate_schedule_is_refused():
    with pytest.raises(
        ValueError, match=r"\[train\] lr_schedule must be one of 'plateau', 'cosine', got 'step'"
    ):
        Config.from_dict({"train": {"lr_schedule": "step"}})


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"train": {"loss": "foo"}},
            "[train] loss must be one of 'bce', 'dice', 'focal', 'combined', got 'foo'",
        ),
        ({"train": {"epochs": 2.5}}, "[train] epochs must be an integer, got 2.5"),
        ({"train": {"mixed_precision": "yes"}}, "[train] mixed_precision must be true or false, got 'yes'"),
        ({"train": {"bands": ["red", 3]}}, "[train] bands must be a list of a string, got ('red', 3)"),
        (
            {"tiles": {"fractions": [0.5, 0.5]}},
            "[tiles] fractions must be a list of 3 (a number, a number, a number)",
        ),
        ({"tiles": {"negative_ratio": "all"}}, "[tiles] negative_ratio must be a number or none, got 'all'"),
        ({"store": {"chunk": 0}}, "chunk (--chunk) must be an integer >= 1, got 0"),
        ({"predict": {"threshold": 1.5}}, "threshold (--threshold) must be in [0, 1], got 1.5"),
        (
            {"predict": {"precision": "half"}},
            "[predict] precision must be one of 'float32', 'bfloat16', 'float16', 'auto', got 'half'",
        ),
        ({"train": {"depth": 7}}, "[train] tile_size 64 must be divisible by 2**depth = 128"),
    ],
)
def test_a_bad_value_is_refused_when_the_config_is_made(data, message):
    from miningxr import ConfigError

    with pytest.raises(ConfigError) as info:
        Config.from_dict(data)
    assert message in str(info.value)


def test_integers_are_numbers_and_none_is_allowed_where_the_type_says_so():
    cfg = Config.from_dict({"train": {"learning_rate": 1}, "tiles": {"negative_ratio": None}})
    assert cfg.train.learning_rate == 1 and cfg.tiles.negative_ratio is None


def test_a_bad_config_file_is_one_line_from_the_cli(tmp_path, capsys):
    from miningxr.cli import main

    path = tmp_path / "bad.toml"
    path.write_text('[train]\nloss = "foo"\n')
    assert main(["train", "--store", str(tmp_path / "s.zarr"), "--config", str(path)]) == 2
    assert "error: [train] loss must be one of" in capsys.readouterr().err
    assert main(["train", "--store", str(tmp_path / "s.zarr"), "--config", str(tmp_path / "none.toml")]) == 2
    assert "config file" in capsys.readouterr().err
