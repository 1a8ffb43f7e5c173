"""What every command group shares: the parser class (defaults shown in --help), the
default repository, and the connection options of commands that talk to a server."""
from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_REPOSITORY = Path("model_repository")


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`--help` shows each option's default, except where there is none to show (None, a
    flag's False, an empty list) or the help text already says it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        nothing = default is None or default is False or default == [] or default == argparse.SUPPRESS
        if nothing or "default" in text:
            return text
        return super()._get_help_string(action)


def describe(parser: argparse.ArgumentParser) -> None:
    """Give every subcommand without a description its one-line help as description, so its
    own --help says what it does (argparse shows a subcommand's help only in its parent's)."""
    for action in parser._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, sub in action.choices.items():
            text = helps.get(name)
            if not sub.description and text:
                sub.description = f"{text[0].upper()}{text[1:]}."
            describe(sub)


class Parser(argparse.ArgumentParser):
    """Every (sub)command's parser: defaults in --help, even on options without help text."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs) -> argparse.Action:
        if kwargs.get("help") is None and kwargs.get("default") is not None and kwargs.get("default") is not False:
            kwargs["help"] = "default: %(default)s"  # argparse prints nothing for an option without help
        return super().add_argument(*args, **kwargs)
