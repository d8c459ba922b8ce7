"""The quality metric of `eval` and `study` for the config's data: sliced Wasserstein for 2-D
sets, FD in a classifier's features for digits, MNIST-like sets and the user's labelled images,
FID/KID with Inception for other images, against the reference `eval.fid_reference` names (`fid_reference`); each reads
the run's `Plan` (its data facts, device and data sets)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import torch



def quality_metric_for(plan, test: torch.Tensor, mixture=None, workdir=None):
    """`evaluate.quality_metric` for the run's data (points, digits, MNIST-like or images), on
    the run's device; image FID statistics of a whole split are cached in `workdir`/eval."""
    from ..evaluation.sample_quality import quality_metric

    config, device, judge, floor = plan.config, plan.device, None, None
    if plan.data.judge == "digits":
        kind, floor = "digits", plan.dataset("train").data  # the floor: real images, as many as the samples
    elif _classifier_judged(plan):
        from ..evaluation.judges import cached_judge

        train = plan.dataset("train")  # read once: the judge's data and the floor's
        kind, judge, floor = "classifier", cached_judge(train.data, train.labels), train.data
    else:
        kind = "images" if plan.data.images else "points"
    try:
        return quality_metric(kind, test, device, seed=config.seed, image_size=config.data.image_size,
                              inception_path=config.eval.inception_path or None, mixture=mixture, judge=judge,
                              floor=floor, download_inception=config.eval.get("download_inception", False),
                              fid_reference=fid_reference_for(plan, workdir) if kind == "images" else None)
    except FileNotFoundError as error:
        if plan.data.judge != "classifier":
            raise
        raise FileNotFoundError(f"{error}; without it, your images are scored offline when their files hold classes "
                                f"(class subfolders with data.labels_from=subfolders, or labels in the .npz), by a "
                                f"classifier fitted on the training split") from None


def data_judge(plan):
    """The classifier judge of the run's data set (digits, MNIST, Fashion-MNIST), or None."""
    from ..evaluation.judges import DigitsJudge, cached_judge

    config = plan.config
    if plan.data.judge == "digits":
        return DigitsJudge(config.data.image_size)
    if _classifier_judged(plan):
        train = plan.dataset("train")
        return cached_judge(train.data, train.labels)
    return None


def _classifier_judged(plan) -> bool:
    """A labelled image set whose registration names a fitted classifier as its judge: MNIST,
    Fashion-MNIST, and the user's own images where their files hold classes (a folder read with
    data.labels_from=subfolders, an .npz with labels); without labels, FID with Inception."""
    from ..data.datasets import dataset_facts

    return plan.data.judge == "classifier" and dataset_facts(plan.data.name).classes_in(plan.config.data) is not None


def fid_reference_for(plan, workdir):
    """What `eval.fid_reference` names, as a function of the loaded feature extractor: the
    training split's statistics (cached in `workdir`/eval, or the package's cache folder without
    a workdir), clean-fid's published ones ("cleanfid:NAME:SPLIT"), or None for the test split."""
    from ..evaluation.sample_quality import INCEPTION_FILENAME, inception_cache_file
    from ..evaluation.fid_reference import cleanfid_statistics, file_digest, split_statistics
    from ..files.output_files import cache_folder

    config, device = plan.config, plan.device
    choice = describe_fid_reference(config.eval.get("fid_reference", "test"))
    if choice == ("test",):
        return None
    if choice[0] == "cleanfid":
        return lambda extractor: cleanfid_statistics(choice[1], choice[2], config.data.image_size,
                                                     download=config.eval.get("download_inception", False))

    def training_split(extractor):
        weights = config.eval.inception_path or inception_cache_file()
        if os.path.isdir(weights):
            weights = os.path.join(weights, INCEPTION_FILENAME)
        train = plan.dataset("train")
        folder = Path(workdir) / "eval" if workdir is not None else cache_folder()
        return split_statistics(train.batch, len(train), extractor, file_digest(weights), folder,
                                f"{config.data.dataset}_train_{config.data.image_size}", device=device)
    return training_split


def fid_reference_text(config, workdir) -> str:
    """What image FID/KID were computed against, for the eval report."""
    choice = describe_fid_reference(config.eval.get("fid_reference", "test"))
    if choice == ("train",):
        return (f"Inception statistics of the whole {config.data.dataset} training split, cached in "
                f"{Path(workdir) / 'eval'}")
    if choice == ("test",):
        return f"the {config.data.dataset} test split"
    return f"clean-fid's published statistics {':'.join(choice[1:])}"


def describe_fid_reference(choice: str) -> Optional[tuple]:
    """("cleanfid", name, split) for "cleanfid:NAME:SPLIT", (choice,) for train / test, None
    for anything else (a config error)."""
    if choice in ("train", "test"):
        return (choice,)
    parts = choice.split(":")
    if len(parts) == 3 and parts[0] == "cleanfid" and all(parts[1:]):
        return tuple(parts)
    return None
