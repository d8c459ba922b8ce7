"""`python -m sde_diffusion.sampling`: the registered samplers as a Markdown table, read from the
registry (options with their defaults and those declared for a model family, the declared grids,
adaptive or not), so that the table
in the README is regenerated, never edited by hand."""
import inspect
import re

from . import SAMPLER_TRAITS, SAMPLERS, SamplerSpec
from .registry import HOOK_ARGUMENT
from .spec import grid_text


def _first_sentence(function) -> str:
    text = " ".join((inspect.getdoc(function) or "").split("\n\n")[0].split())
    end = re.search(r"(?<! al)(?<! eq)\. |: |; ", text)  # not at "et al." or "eq."
    return text[:end.start()] if end else text.rstrip(".")


def sampler_table() -> str:
    lines = ["| method | options (defaults) | default grid | steps | what |", "|---|---|---|---|---|"]
    for name, function in SAMPLERS.items():
        parameters = inspect.signature(function).parameters.values()
        options = ", ".join(f"`{p.name}={p.default!r}`" for p in parameters
                            if p.kind == inspect.Parameter.KEYWORD_ONLY and p.name != HOOK_ARGUMENT)
        traits = SAMPLER_TRAITS[name]
        declarations = {}  # declared options' text -> the families declaring them
        for family, declared in traits.family_options.items():
            overriding = sorted({other for option in declared for other in traits.overridden_by.get(option, ())})
            text = ", ".join(f"`{k}={v!r}`" for k, v in declared.items())
            text += f" unless {' or '.join(f'`{other}`' for other in overriding)}" if overriding else ""
            declarations.setdefault(text, []).append(family)
        for declared, families in declarations.items():
            options += f"; on {', '.join(families)} {declared}"
        grids = {}  # grid text -> the families declaring it
        for family, (schedule, schedule_options) in traits.family_grids.items():
            grids.setdefault(grid_text(schedule, schedule_options), []).append(family)
        unless = "".join(f" unless `{name}`" for name in traits.overridden_by.get("schedule", ()))
        for grid, families in grids.items():
            options += f"; on {', '.join(families)} the `{grid}` grid{unless}"
        spec = SamplerSpec(name)
        adaptive = traits.adaptive({})
        steps = "adaptive" if adaptive else f"NFE {spec.score_calls(10)} for 10 steps"
        grid = f"ends only, {spec.end_text()}" if adaptive else spec.grid_summary()
        lines.append(f"| `{name}` | {options} | `{grid}` | {steps} | {_first_sentence(function)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(sampler_table())
