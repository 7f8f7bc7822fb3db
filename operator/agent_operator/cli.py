"""`agentctl`: render manifests offline, print the CRD, run the demo or the operator.

Thin on purpose: argument parsing and output only. Rendering is `builders.build_children`,
input checking is `validation`, the CRD is `crd`. Exit codes: 0 success, 2 invalid user input
(one line per problem, never a traceback), 1 anything else reported by a subcommand.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import importlib.util
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
import yaml

from agent_operator import __version__, crd, models, validation

EXIT_INVALID = 2


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (dashboard JSON, system prompts) as literal blocks, for reviewable diffs."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str_representer)


def to_yaml(documents: Sequence[dict[str, Any]]) -> str:
    """Multi-document YAML, keys in the builders' order."""
    return yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, width=120, explicit_start=True)


def load_services(sources: Sequence[str]) -> list[models.AgentService]:
    """Every AgentService of the given files; on any problem print them all and exit 2."""
    services: list[models.AgentService] = []
    failed = False
    for source in sources:
        try:
            documents = validation.load_documents(source, validation.read_text(source))
        except validation.InputError as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed = True
            continue
        for document in documents:
            try:
                services.append(validation.parse_agent_service(document))
            except validation.InvalidManifest as exc:
                failed = True
                print(f"error: {document.where}: {exc.headline}", file=sys.stderr)
                for problem in exc.problems:
                    print(problem, file=sys.stderr)
    if failed:
        raise SystemExit(EXIT_INVALID)
    return services


def render_children(services: Sequence[models.AgentService]) -> list[dict[str, Any]]:
    """What the operator would apply for these services, in order; a spec no builder can serve exits 2."""
    from agent_operator import builders  # noqa: PLC0415 - keeps `agentctl crd` free of builder imports

    children: list[dict[str, Any]] = []
    failed = False
    for svc in services:
        try:
            children.extend(builders.build_children(svc))
        except models.CrossFieldError as exc:  # rules only a builder can check, e.g. a URL KEDA cannot dial
            failed = True
            print(f'error: AgentService "{svc.metadata.name}" cannot be served:', file=sys.stderr)
            print(f"{exc.field}: {exc.message}", file=sys.stderr)
    if failed:
        raise SystemExit(EXIT_INVALID)
    return children


def cmd_render(args: argparse.Namespace) -> int:
    services = load_services(args.filename)
    sys.stdout.write(to_yaml(render_children(services)))
    return 0


def cmd_crd(args: argparse.Namespace) -> int:
    sys.stdout.write(crd.crd_yaml())
    return 0


def cmd_reference(args: argparse.Namespace) -> int:
    sys.stdout.write(crd.reference_markdown())
    return 0


def summary_table(rows: Sequence[tuple[str, ...]]) -> str:
    """Left-aligned columns, the first row as header."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def cmd_demo(args: argparse.Namespace) -> int:
    examples = sorted(Path(args.examples).glob("*.yaml"))
    if not examples:
        print(f"error: no examples in {args.examples}", file=sys.stderr)
        return EXIT_INVALID
    started = time.perf_counter()
    services = load_services([str(path) for path in examples])
    print("=== 1. What the operator would create for examples/*.yaml (agentctl render) ===\n")
    rows: list[tuple[str, ...]] = [("AGENTSERVICE", "KIND", "NAME", "API VERSION")]
    count = 0
    for svc in services:
        for child in render_children([svc]):
            count += 1
            rows.append(
                (
                    f"{svc.metadata.namespace}/{svc.metadata.name}",
                    child["kind"],
                    child["metadata"]["name"],
                    child["apiVersion"],
                )
            )
    elapsed = time.perf_counter() - started
    print(summary_table(rows))
    print(
        f"\n{len(services)} AgentServices from {args.examples} -> {count} objects, rendered in {elapsed * 1000:.0f} ms"
    )
    # The demo prints its own narrative; the operator's and runtime's logs would drown it.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("kopf").setLevel(logging.WARNING)
    print("\n=== 2. The operator on an embedded dev cluster (kmock's Kubernetes emulator) ===\n")
    demo = importlib.import_module("agent_operator.demo")
    demo.main(args)
    print("\n=== 3. The agent runtime: redis-server, the local model, the task API and a worker ===\n")
    localdemo = importlib.import_module("agent_runtime.localdemo")
    asyncio.run(localdemo.run_runtime_demo(sys.stdout))
    return 0


def cmd_operator(args: argparse.Namespace) -> int:
    """Hand over to `agent_operator.run`, which parses its own options (`agentctl operator --help`)."""
    if importlib.util.find_spec("agent_operator.run") is None:
        print("error: the operator entry point (agent_operator.run) is not part of this build", file=sys.stderr)
        return 1
    run = importlib.import_module("agent_operator.run")
    result: int = run.main(list(args.operator_args))
    return result


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentctl", description="AgentService operator tools.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    render = commands.add_parser("render", help="print, as YAML, what the operator would apply for AgentServices")
    render.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE",
        help="AgentService manifest (repeatable; - reads standard input)",
    )
    render.set_defaults(func=cmd_render)

    crd_cmd = commands.add_parser("crd", help="print the AgentService CustomResourceDefinition")
    crd_cmd.set_defaults(func=cmd_crd)

    reference = commands.add_parser("reference", help="print the configuration reference (docs/reference.md)")
    reference.set_defaults(func=cmd_reference)

    demo = commands.add_parser("demo", help="render the examples and show what would be created")
    demo.add_argument("--examples", default="examples", metavar="DIR", help="directory of AgentService manifests")
    demo.set_defaults(func=cmd_demo)

    operator = commands.add_parser(
        "operator", help="run the operator (kopf) against the current cluster", add_help=False
    )
    operator.set_defaults(func=cmd_operator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.func is cmd_operator:
        args.operator_args = extra  # options of `agent_operator.run`'s own parser
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        code: int = args.func(args)
    except BrokenPipeError:  # `agentctl render ... | head`
        sys.stderr.close()
        return 0
    return code


if __name__ == "__main__":
    raise SystemExit(main())
