"""A workdir remembers the data it trained on: the fingerprint of the user's own data in a
checkpoint against the data of the run that resumes it (`app.workdir_config`)."""
import logging

import pytest
import torch

from ml_collections import ConfigDict
from sde_diffusion.app.workdir_config import DATA_FIELD, ConfigChangedError, check_resume, data_fingerprint
from sde_diffusion.data.datasets import ArrayDataset


def tiny_toy_config():
    return ConfigDict({"seed": 42, "training": {"batch_size": 8, "resume_despite_changes": False},
                       "data": {"dataset": "folder", "root": "/pictures"}})


def _checkpoint(config, data):
    return {"config": config.to_json(), **({"data": data} if data else {})}


def test_data_of_other_contents_is_refused_like_a_config_change():
    config = tiny_toy_config()
    stored = {"size": 40, "digest": "0123456789abcdef"}
    assert check_resume(_checkpoint(config, stored), config, "ckpt", dict(stored)) is False
    with pytest.raises(ConfigChangedError, match=rf"cannot resume ckpt: .*\({DATA_FIELD}: 40 items, contents "
                                                 r"0123456789ab -> 44 items, contents fedcba987654\)"):
        check_resume(_checkpoint(config, stored), config, "ckpt", {"size": 44, "digest": "fedcba9876543210"})


def test_resume_despite_changes_warns_and_says_the_data_changed(caplog):
    config = tiny_toy_config()
    config.training.resume_despite_changes = True
    with caplog.at_level(logging.WARNING):
        changed = check_resume(_checkpoint(config, {"size": 40, "digest": "a"}), config, "ckpt",
                               {"size": 20, "digest": "b"})
    assert changed is True and f"despite a changed {DATA_FIELD}: 40 items, contents a -> 20 items" in caplog.text


def test_no_fingerprint_on_either_side_is_not_compared():
    config = tiny_toy_config()
    assert check_resume(_checkpoint(config, None), config, "ckpt", {"size": 1, "digest": "x"}) is False
    assert check_resume(_checkpoint(config, {"size": 1, "digest": "x"}), config, "ckpt", None) is False
    published = ArrayDataset(torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64))
    assert data_fingerprint(published) is None
    published.fingerprint = "abc"
    assert data_fingerprint(published) == {"size": 3, "digest": "abc"}
