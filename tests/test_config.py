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
