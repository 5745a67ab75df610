"""The ``mmcl`` command line: one thin click command per workflow step.

Subcommands are imported lazily, so ``mmcl ensemble --help`` never pays for
importing torch or transformers.
"""

from __future__ import annotations

import importlib

import click

from mmcl import __version__

# command name -> "module:attribute"; each module holds one thin click command.
SUBCOMMANDS: dict[str, str] = {
    "prepare": "mmcl.cli.prepare:prepare",
    "extract-text": "mmcl.cli.extract_text:extract_text",
    "train": "mmcl.cli.train:train",
    "test": "mmcl.cli.test:test",
    "ensemble": "mmcl.cli.ensemble:ensemble",
}

SHORT_HELP: dict[str, str] = {
    "prepare": "Build a prepared dataset from raw recordings.",
    "extract-text": "Extract multimodal-LLM text features and cached RGB features.",
    "train": "Train a skeleton GCN with MMCL co-learning (Accelerate).",
    "test": "Evaluate a trained model on skeletons alone.",
    "ensemble": "Fuse per-stream score files by sample name.",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return _unavailable(cmd_name)
            raise
        return getattr(module, attr)

    def invoke(self, ctx: click.Context):  # noqa: D401 - click API
        """Run the subcommand, turning project errors into clean CLI messages."""
        from mmcl.errors import MMCLError

        try:
            return super().invoke(ctx)
        except MMCLError as exc:
            raise click.ClickException(str(exc)) from exc

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SHORT_HELP.get(name, "")) for name in self.list_commands(ctx)]
        with formatter.section("Commands (in workflow order)"):
            formatter.write_dl(rows)


def _unavailable(name: str) -> click.Command:
    @click.command(name=name, help=f"{SHORT_HELP.get(name, '')} (not available in this build)")
    def _cmd() -> None:
        raise click.ClickException(f"'mmcl {name}' is not available in this build of mmcl.")

    return _cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mmcl")
def main() -> None:
    """mmcl: skeleton action recognition with multi-modality co-learning.

    \b
    The workflow, one subcommand per step; data passes between steps in files:
      mmcl prepare synthetic --out data/synthetic    # or ntu60/ntu120/ucla/utd-mhad
      mmcl extract-text --data data/synthetic ...    # LLM text + RGB features (optional)
      mmcl train --config configs/synthetic/xsub/joint.yaml
      mmcl test --run runs/synthetic-xsub-joint
      mmcl ensemble runs/*/scores.npz

    Training runs on Hugging Face Accelerate: use `accelerate launch -m mmcl train`
    for multi-GPU, multi-node and mixed precision. Inference needs skeletons only.
    """
