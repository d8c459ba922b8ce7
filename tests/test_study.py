"""The sampler study: spec parsing, NFE budgets that samplers really use, the grid on the exact
oracle, and its three output files."""
import csv

import pytest
import torch

from sde_diffusion.sampling import parse_spec, sample
from sde_diffusion.processes.sdes import VPSDE
from sde_diffusion.evaluation.study import run_study, write_study

from conftest import mixture_2d


def test_parse_spec_splits_the_grid_from_sampler_options():
    spec = parse_spec("dpm_solver++ order=3 schedule=karras eps=1e-4 rho=5 eta=0.5 unipc=true")
    assert spec.method == "dpm_solver++"
    assert (spec.schedule, spec.eps, spec.schedule_options) == ("karras", 1e-4, {"rho": 5})
    assert spec.options == {"order": 3, "eta": 0.5, "unipc": True}
    assert not spec.deterministic and not spec.adaptive
    assert parse_spec("ddim").deterministic and parse_spec("heun").deterministic
    assert parse_spec("ode rtol=1e-3").adaptive and parse_spec("adaptive_sde").adaptive
    assert not parse_spec("heun churn=10").deterministic


@pytest.mark.parametrize("text, message", [("", "empty"), ("magic steps=3", "unknown sampler"),
                                           ("ddim eta", "key=value"), ("ddim =3", "key=value"),
                                           ("ddim order=3", "sampler 'ddim' has no option 'order'"),
                                           ("dpm_solver++ order=4", "sampler 'dpm_solver\\+\\+' takes order 1, 2 or 3, got 4"),
                                           ("ddim schedule=karras power=0.5", "schedule 'karras' has no option 'power'"),
                                           ("pc rho=7", "schedule 'uniform' has no option 'rho'")])
def test_parse_spec_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(text)


@pytest.mark.parametrize("text", ["ddim", "dpm_solver++ order=3", "heun", "pc predictor=euler_maruyama corrector=none",
                                  "pc predictor=reverse_diffusion corrector=langevin",
                                  "pc predictor=reverse_diffusion corrector=langevin corrector_steps=2",
                                  "sde_solver solver=euler"])
@pytest.mark.parametrize("nfe", [10, 21])
def test_steps_for_nfe_give_the_budget(text, nfe):
    """The NFE `sample` counts never exceeds the budget and misses it by less than one step."""
    spec = parse_spec(text)
    _, used = sample(lambda x, t: -x, VPSDE(), (4, 2), spec.method, steps=spec.steps_for_nfe(nfe),
                     generator=0, **spec.options)
    per_step = 1 + spec.options.get("corrector_steps", 1) if "langevin" in text else (2 if spec.method == "heun" else 1)
    assert nfe - per_step < used <= nfe, used


def test_study_on_the_oracle_writes_rows_files_and_shrinking_ode_distances(tmp_path):
    mixture, sde = mixture_2d(), VPSDE()
    specs = ["dpm_solver++ order=2 schedule=logsnr", "ddim eta=1", "ode rtol=1e-3 atol=1e-3", "heun"]
    rows = run_study(mixture.score_fn(sde), sde, (2000, 2), specs, [10, 20, 40], mixture.sample_errors,
                     progress=False)
    assert len(rows) == 3 + 3 + 1 + 3 and all(row["status"] == "ok" for row in rows)
    dpm = [row for row in rows if row["method"] == "dpm_solver++"]
    assert [row["nfe"] for row in dpm] == [10, 20, 40]
    assert dpm[0]["ode_median"] > dpm[1]["ode_median"] > dpm[2]["ode_median"]
    assert dpm[2]["std"] < 0.05 and dpm[2]["ode_median"] < 0.01
    assert all("ode_rms" not in row for row in rows if row["method"] == "ddim")  # stochastic
    paths = write_study(rows, tmp_path, "std", title="oracle")
    with open(paths["csv"]) as handle:
        assert len(list(csv.DictReader(handle))) == len(rows)
    assert "| dpm_solver++ order=2 schedule=logsnr |" in open(paths["md"]).read()
    assert (tmp_path / "study.png").stat().st_size > 10_000


def test_ode_distance_is_to_the_reference_at_the_specs_own_eps(tmp_path):
    """A sampler that stops at eps = 0.2 is compared with the ODE stopped there too (one
    reference per eps), so its distance measures discretization only."""
    mixture, sde = mixture_2d(), VPSDE()
    specs = ["dpm_solver++ order=2 schedule=logsnr eps=0.2", "dpm_solver++ order=2 schedule=logsnr"]
    rows = run_study(mixture.score_fn(sde), sde, (500, 2), specs, [40], mixture.sample_errors, progress=False)
    assert all(row["ode_median"] < 0.01 for row in rows), rows
    paths = write_study(rows, tmp_path, ["std", "ode_median"], name="two")  # one panel per key
    assert (tmp_path / "two.png").stat().st_size > 10_000 and paths["md"].endswith("two.md")


def test_a_failing_run_is_a_status_not_a_crash():
    def broken(x, t):
        return torch.full_like(x, float("nan"))
    rows = run_study(broken, VPSDE(), (10, 2), ["ddim"], [5], lambda x: {}, progress=False, reference_ode=False)
    assert rows[0]["status"].startswith("FloatingPointError")


def test_an_oracle_study_needs_a_data_set_that_declares_its_exact_distribution(tmp_path):
    """study.oracle reads the data set's registered oracle (gmm's mixture); on another data set
    it stops in one line naming those that have one, before anything is written."""
    from conftest import tiny_toy_config
    from sde_diffusion.app.modes import run_study_mode

    config = tiny_toy_config()
    config.data.dataset, config.study.oracle = "moons", True
    with pytest.raises(ValueError, match=r"^study.oracle needs a data set whose exact score is known \(gmm\), "
                                         r"not data.dataset=moons$"):
        run_study_mode(config, tmp_path)
    assert not any(tmp_path.iterdir())
