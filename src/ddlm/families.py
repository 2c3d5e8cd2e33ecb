"""Method families: a process, its sampler and the sampler options it reads, registered once by name.

A family is what ``process.name`` names: masked diffusion, block diffusion, SEDD (absorbing and
uniform) and the autoregressive baseline are registered here. Everything that depends on the
family reads it from :func:`get_family`: the trainer and the model directories build the process
(:func:`build_process`), the pipeline runs the sampler (:func:`sampler_steps`), and the CLI, the
API and the web page offer the options the family takes (:func:`offered_options`).

Adding a family is one :func:`register_family` call (see docs/design.md): a process class with
``from_config(config, vocab)``, a step generator, the :class:`SamplerOptions` fields it reads and,
optionally, a dataclass of options of its own declared with :func:`ddlm.schema.option`. A package
that names the module making that call under the entry-point group ``ddlm.families`` has its
family registered whenever ddlm's are, so the ``ddlm`` command takes it too.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from ddlm.errors import DDLMError
from ddlm.processes import Autoregressive, BlockDiffusion, MaskedDiffusion, Process, ScoreEntropyDiffusion, Vocabulary
from ddlm.samplers.autoregressive import ar_steps
from ddlm.samplers.block import BLOCK_OPTIONS, block_steps
from ddlm.samplers.canvas import Canvas
from ddlm.samplers.masked import MASKED_OPTIONS, masked_steps
from ddlm.samplers.options import SamplerOptions
from ddlm.samplers.sedd import SEDD_OPTIONS, sedd_steps
from ddlm.samplers.step import SamplerStep
from ddlm.schema import DeclaredOption, check_value, declared_options

Sampler = Callable[..., Iterator[SamplerStep]]
PLUGIN_GROUP = "ddlm.families"


@dataclass(frozen=True)
class Family:
    """One method family under the name users type (``process.name=...``).

    ``build``: the process from its configuration dict and vocabulary. ``sampler``: the step
    generator ``(model, process, canvas, options, first_row)``. ``options``: the fields of
    :class:`SamplerOptions` beyond the common ones that the sampler reads. ``own_options``: a
    dataclass of options no built-in family has; their values travel in ``SamplerOptions.extra``.
    ``process_keys``: the ``process.*`` training settings ``build`` reads besides ``name`` (None: not
    declared, so none is refused).
    """

    name: str
    build: Callable[[dict[str, Any], Vocabulary], Process]
    sampler: Sampler
    options: tuple[str, ...] = ()
    own_options: type | None = None
    process_keys: tuple[str, ...] | None = None

    def own(self) -> tuple[DeclaredOption, ...]:
        return declared_options(self.own_options) if self.own_options is not None else ()

    def offered(self) -> list[str]:
        """The names of every option this family takes, common ones first."""
        return [*common_options(), *self.options, *(declared.name for declared in self.own())]

    def foreign(self) -> list[DeclaredOption]:
        """The SamplerOptions fields other families read and this one does not."""
        return [declared for declared in declared_options(SamplerOptions)
                if declared.name in family_options() and declared.name not in self.options]

    def check(self, options: SamplerOptions) -> None:
        """Refuse an option this family does not take (set away from its default), or an invalid own option."""
        own = {declared.name: declared for declared in self.own()}
        for declared in self.foreign():
            if getattr(options, declared.name) != declared.default:
                raise self.no_option(declared.name)
        for name, value in options.extra.items():
            if name not in own:
                raise self.no_option(name) if name in option_table() else DDLMError(
                    f"unknown sampler option {name}; the {self.name} sampler's options are {', '.join(self.offered())}",
                    field=name)
            check_value(own[name], value)

    def no_option(self, name: str) -> DDLMError:
        return DDLMError(f"the {self.name} sampler has no option {name}; drop it for this model", field=name)

    def applicable(self, options: SamplerOptions) -> dict[str, Any]:
        """The options this family takes, with their values (defaults for own options not given): for reports."""
        values = options.to_dict()
        own_defaults = {declared.name: declared.default for declared in self.own()}
        return {name: values.get(name, own_defaults.get(name)) for name in self.offered()}


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Make ``family`` known under its name; its own options may not reuse another option's name."""
    taken = option_table()
    clash = [declared.name for declared in family.own() if declared.name in taken]
    if clash:
        raise DDLMError(f"family {family.name!r} declares option {clash[0]!r}, which exists already; rename it")
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise DDLMError(f"unknown process {name!r}; choose one of {sorted(FAMILIES)}", field="process")
    return FAMILIES[name]


def check_process_settings(name: str, keys: Iterable[str]) -> None:
    """Refuse a ``process.KEY`` setting (``keys`` without the prefix) that the ``name`` process never reads."""
    family = get_family(name)
    if family.process_keys is None:
        return
    for key in keys:  # a nested key such as schedule.exponent belongs to its first part
        if key != "name" and key.partition(".")[0] not in family.process_keys:
            settings = ", ".join(family.process_keys) or "none but name"
            raise DDLMError(f"process.{key} is not a setting of the {name} process (its settings: {settings}); "
                            "remove it, or set process.name to the process it belongs to", field=f"process.{key}")


def family_options() -> set[str]:
    """The SamplerOptions fields some family reads: the rest are common to every family."""
    return {name for family in FAMILIES.values() for name in family.options}


def common_options() -> list[str]:
    return [declared.name for declared in declared_options(SamplerOptions) if declared.name not in family_options()]


def option_table() -> dict[str, DeclaredOption]:
    """Every sampler option by name: SamplerOptions' fields, then the registered families' own options."""
    table = {declared.name: declared for declared in declared_options(SamplerOptions)}
    for family in FAMILIES.values():
        table.update({declared.name: declared for declared in family.own()})
    return table


def offered_options() -> list[DeclaredOption]:
    """Every sampler option, in the order the front ends list them."""
    return list(option_table().values())


def option_help(declared: DeclaredOption) -> str:
    """What the front ends say of an option: the families that take it (unless all do), then its description."""
    takers = [family.name for family in FAMILIES.values()
              if declared.name in family.options or declared.name in {own.name for own in family.own()}]
    return f"{', '.join(takers)}: {declared.describe()}" if takers else declared.describe()


def build_process(config: dict[str, Any], vocab: Vocabulary) -> Process:
    """The process described by ``config`` (as written by ``process.to_dict()``)."""
    return get_family(config.get("name", "masked")).build(config, vocab)


def sampler_steps(model: torch.nn.Module, process: Process, canvas: Canvas, options: SamplerOptions,
                  first_row: int = 0) -> Iterator[SamplerStep]:
    """The steps of the sampler of ``process``'s family (a seed is drawn when ``options`` has none)."""
    family = get_family(process.name)
    family.check(options)
    return family.sampler(model, process, canvas, options.with_seed(), first_row)


def load_plugins() -> None:
    """Import every module installed under the entry-point group ``ddlm.families`` (each registers its family)."""
    for entry in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        try:
            entry.load()
        except Exception as error:  # a broken plug-in must not take ddlm's own families down
            raise DDLMError(f"the ddlm.families plug-in {entry.name!r} ({entry.value}) failed to load: {error}; "
                            "fix or uninstall it") from None


MASKED_KEYS = ("schedule", "eps", "antithetic", "estimator")
SEDD_KEYS = ("schedule", "eps", "antithetic")
for builtin in (
    Family("masked", MaskedDiffusion.from_config, masked_steps, MASKED_OPTIONS, process_keys=MASKED_KEYS),
    Family("block", BlockDiffusion.from_config, block_steps, BLOCK_OPTIONS,
           process_keys=(*MASKED_KEYS, "block_size", "clip_min", "clip_max")),
    Family("sedd-absorb", ScoreEntropyDiffusion.from_config, sedd_steps, SEDD_OPTIONS, process_keys=SEDD_KEYS),
    Family("sedd-uniform", ScoreEntropyDiffusion.from_config, sedd_steps, SEDD_OPTIONS, process_keys=SEDD_KEYS),
    Family("ar", Autoregressive.from_config, ar_steps, process_keys=()),
):
    register_family(builtin)
load_plugins()
