#!/usr/bin/env python3
"""Write the option reference of the plugin (docs/options.md) from the registered components.

Every option that ``bart_vae``, ``text_vae`` and ``elbo`` add to fairseq's own, with its default
and help text, read from the same parsers ``fairseq-train`` builds; a test checks that the
committed file is what this script writes, so the reference cannot fall behind the code.

    python scripts/options_reference.py > docs/options.md
"""

import argparse

from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterionConfig,
)
from fairseq.dataclass.utils import gen_parser_from_dataclass
from fairseq.models.bart.model import BARTModel

from fairseq_vae.criterions.elbo import ELBOConfig
from fairseq_vae.models.bart_vae import BARTVAEModel, bart_vae_architecture
from fairseq_vae.tasks.text_vae import TextVAEConfig


def actions(add) -> dict:
    """{flag: argparse action} of what ``add(parser)`` puts on an empty parser."""
    parser = argparse.ArgumentParser(add_help=False)
    add(parser)
    return {a.option_strings[0]: a for a in parser._actions if a.option_strings}


def model_defaults() -> argparse.Namespace:
    """bart_vae's architecture defaults (the model's add_args leaves them to the architecture)."""
    args = argparse.Namespace()
    bart_vae_architecture(args)
    return args


def registered_options():
    """[(component, flag, default, help)] of the options the plugin adds, in parser order."""
    defaults = model_defaults()
    model = actions(BARTVAEModel.add_args)
    rows = []
    for flag, action in model.items():
        if flag not in actions(BARTModel.add_args):
            default = getattr(defaults, action.dest, action.default)
            rows.append(("model (--arch bart_vae)", flag, default, action.help))
    task = actions(lambda p: gen_parser_from_dataclass(p, TextVAEConfig()))
    rows += [("task (--task text_vae)", f, a.default, a.help) for f, a in task.items()]
    criterion = actions(lambda p: gen_parser_from_dataclass(p, ELBOConfig()))
    inherited = actions(
        lambda p: gen_parser_from_dataclass(p, LabelSmoothedCrossEntropyCriterionConfig())
    )
    rows += [
        ("criterion (--criterion elbo)", f, a.default, a.help)
        for f, a in criterion.items()
        if f not in inherited
    ]
    return rows


def markdown() -> str:
    lines = [
        "# Options",
        "",
        "What `--arch bart_vae` (and `bart_vae_small`, `bart_vae_large`), `--task text_vae` and",
        "`--criterion elbo` add to fairseq's own options. Written by",
        "`python scripts/options_reference.py > docs/options.md`; `fairseq-train --user-dir",
        "fairseq_vae --arch bart_vae --task text_vae --criterion elbo --help` prints the same.",
    ]
    component = None
    for name, flag, default, help_text in registered_options():
        if name != component:
            component = name
            lines += ["", f"## The {name}", "", "| option | default | meaning |", "|---|---|---|"]
        text = " ".join((help_text or "").split()).replace("|", "\\|")
        lines.append(f"| `{flag}` | `{default}` | {text} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
