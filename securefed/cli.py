"""The ``securefed`` command: demo, daemons, keys, status, in-memory simulation.

Errors that users can fix (bad config, missing file, unsafe key permissions)
are printed as one plain line saying what to do, with exit code 2; nothing
prints a traceback for them.
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

from securefed.errors import InvalidParameter, SecureFedError

__all__ = ["main"]


def _cmd_keygen(args: argparse.Namespace) -> int:
    from securefed.crypto.identity import SigningKey
    from securefed.wire.keys import CurveKeyPair

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / "curve.key", out / "curve.pub"]
    if args.role == "node":
        files += [out / "identity.pem", out / "identity.pub"]
    existing = [str(f) for f in files if f.exists()]
    if existing and not args.force:
        print(f"error: {', '.join(existing)} already exist; use --force to replace them", file=sys.stderr)
        return 2
    curve = CurveKeyPair.generate()
    curve.save(out / "curve.key", out / "curve.pub")
    print(f"wrote {out / 'curve.key'} (secret, mode 0600) and {out / 'curve.pub'}")
    print(f"CURVE public key: {curve.public.decode()}")
    if args.role == "coordinator":
        print("\nPut this in every node's config, [node] section:")
        print(f'coordinator_curve_public_key = "{curve.public.decode()}"')
        return 0
    identity = SigningKey.generate()
    identity.save(out / "identity.pem")
    identity_b64 = base64.b64encode(identity.public_bytes).decode()
    (out / "identity.pub").write_text(identity_b64 + "\n")
    print(f"wrote {out / 'identity.pem'} (secret, mode 0600) and {out / 'identity.pub'}")
    print(f"identity public key: {identity_b64}")
    name = args.name or "NODE-NAME"
    print("\nAdd to the coordinator's config:")
    print(f'[[nodes]]\nname = "{name}"\ncurve_public_key = "{curve.public.decode()}"\nidentity_public_key = "{identity_b64}"')
    print("\nAdd to every node's config (the federation roster, distributed with the task agreement):")
    print(f'[[roster]]\nname = "{name}"\nidentity_public_key = "{identity_b64}"')
    return 0


def _cmd_coordinator(args: argparse.Namespace) -> int:
    from coordinator.daemon import run_coordinator

    return run_coordinator(args.config)


def _cmd_node(args: argparse.Namespace) -> int:
    if args.rebuild and args.action != "ledger":
        raise InvalidParameter("--rebuild goes with 'securefed node ledger': securefed node ledger --config FILE --rebuild")
    if (args.recover or args.reason is not None) and args.action != "audit":
        raise InvalidParameter("--recover goes with 'securefed node audit': securefed node audit --config FILE --recover")
    if args.action == "ledger":
        from node.daemon import print_ledger, rebuild_ledger

        return rebuild_ledger(args.config) if args.rebuild else print_ledger(args.config)
    if args.action == "audit":
        from node.daemon import print_audit, recover_audit

        return recover_audit(args.config, args.reason) if args.recover else print_audit(args.config)
    from node.daemon import run_node

    return run_node(args.config)


def _cmd_status(args: argparse.Namespace) -> int:
    from securefed.status import print_history, print_status

    if args.history:
        return print_history(args.config, args.format or "table")
    if args.format == "json":
        return print_status(args.config, "json")
    if args.format is not None:
        raise InvalidParameter(f"--{args.format} goes with --history: securefed status --config FILE --history --{args.format}")
    return print_status(args.config)


def _cmd_check(args: argparse.Namespace) -> int:
    from securefed.check import check_config

    return check_config(args.config)


def _cmd_simulate(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from securefed.secagg import propose_parameters, simulate
    from securefed.secagg.bounds import smallest_safe_threshold

    threshold, neighbours = args.threshold, args.neighbours
    if threshold is None:
        if neighbours is None:
            proposal = propose_parameters(args.nodes, args.drop_rate, args.colluders)
            threshold, neighbours = proposal.threshold, proposal.neighbours
            print(f"parameters: {proposal.explanation}")
        else:
            degree = neighbours + neighbours % 2
            colluders = args.colluders if args.colluders is not None else max(1, -(-args.nodes // 5))
            threshold = smallest_safe_threshold(args.nodes, degree if degree < args.nodes - 1 else None, colluders)
    vectors = [
        np.frombuffer(__import__("os").urandom(4 * args.dimension), dtype="<u4").astype(np.uint32) for _ in range(args.nodes)
    ]
    step = max(1, round(1 / args.drop_rate)) if args.drop_rate > 0 else 0
    dropped = list(range(1, args.nodes + 1, step)) if step else []
    started = time.perf_counter()
    result = simulate(vectors, threshold, {"masked_input": dropped} if dropped else None, neighbours, colluders=args.colluders)
    elapsed = time.perf_counter() - started
    expected = np.zeros(args.dimension, dtype=np.uint32)
    for node in result.survivors:
        expected += vectors[node - 1]
    exact = bool(np.array_equal(expected, result.sum))
    print(
        f"{args.nodes} nodes, d={args.dimension}, t={threshold}, "
        f"{'complete graph' if neighbours is None else f'{neighbours} neighbours'}, "
        f"{len(dropped)} dropped before masked input: {len(result.survivors)} survivors, "
        f"sum exact: {exact}, {elapsed:.2f} s"
    )
    return 0 if exact else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from securefed.demo import run_demo

    return run_demo(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="securefed", description="Federated learning where the coordinator sees only the sum.")
    parser.add_argument("--version", action="version", version=f"securefed {__import__('securefed').__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run a whole federation on this machine (coordinator + nodes over CURVE ZeroMQ)")
    demo.add_argument("--nodes", type=int, default=5, help="number of node processes (default 5)")
    demo.add_argument(
        "--rounds", type=int, default=None, help="training rounds (default 10; 150 DP-SGD steps with record-level DP)"
    )
    demo.add_argument(
        "--dataset", default="digits", help="bundled dataset: digits, iris, wine, breast_cancer, or diabetes (regression)"
    )
    demo.add_argument("--model", default="sgd_logistic", help="sgd_logistic, mlp, random_forest or gbdt")
    demo.add_argument("--partition", default="iid", help="iid, dirichlet or kmeans")
    demo.add_argument("--alpha", type=float, default=0.5, help="Dirichlet concentration for --partition dirichlet")
    demo.add_argument("--epsilon", type=float, default=None, help="distributed DP: spend at most this epsilon over the run")
    demo.add_argument("--delta", type=float, default=1e-5, help="DP delta (default 1e-5)")
    demo.add_argument(
        "--privacy-unit",
        choices=("record", "site"),
        default="record",
        help="with --epsilon: protect each record (DP-SGD across the sites, the default) or each site's whole update",
    )
    demo.add_argument("--report", default=None, help="write a JSON summary to this file")
    demo.add_argument("--workdir", default=None, help="keep keys, configs, data and logs here (default: a temporary folder)")
    demo.add_argument("--seed", type=int, default=0, help="seed for the data split (not for any key material)")
    demo.set_defaults(func=_cmd_demo)

    keygen = sub.add_parser("keygen", help="create a node's or the coordinator's key files")
    keygen.add_argument("--out", required=True, help="folder for the key files")
    keygen.add_argument("--role", choices=("node", "coordinator"), default="node")
    keygen.add_argument("--name", default=None, help="the node's name, for the config snippets printed")
    keygen.add_argument("--force", action="store_true", help="replace existing key files")
    keygen.set_defaults(func=_cmd_keygen)

    coordinator = sub.add_parser("coordinator", help="run the coordinator daemon")
    coordinator.add_argument("--config", required=True, help="coordinator TOML config")
    coordinator.set_defaults(func=_cmd_coordinator)

    node = sub.add_parser("node", help="run a node daemon, or inspect its privacy ledger")
    node.add_argument(
        "action",
        nargs="?",
        choices=("run", "ledger", "audit"),
        default="run",
        help="run (default), ledger (privacy budget spent), or audit (verify the site's audit log)",
    )
    node.add_argument("--config", required=True, help="node TOML config")
    node.add_argument(
        "--rebuild",
        action="store_true",
        help="with 'ledger': put back the ledger rows that the site's signed audit log proves (after a ledger was lost)",
    )
    node.add_argument(
        "--recover",
        action="store_true",
        help="with 'audit': archive an audit log that fails verification and start a new signed chain naming it",
    )
    node.add_argument("--reason", default=None, help="with 'audit --recover': why, recorded in the new chain's first entry")
    node.set_defaults(func=_cmd_node)

    status = sub.add_parser("status", help="show a coordinator's task, round, connected nodes and metrics")
    status.add_argument("--config", required=True, help="coordinator TOML config")
    status.add_argument(
        "--history", action="store_true", help="print every completed round: accuracy, loss, nodes, epsilon, stage timings, bytes"
    )
    history_format = status.add_mutually_exclusive_group()
    history_format.add_argument(
        "--json",
        dest="format",
        action="store_const",
        const="json",
        help="the status as one JSON object; with --history, a JSON list with one object per round",
    )
    history_format.add_argument(
        "--csv", dest="format", action="store_const", const="csv", help="with --history: CSV with a header row"
    )
    status.set_defaults(func=_cmd_status, format=None)

    check = sub.add_parser("check", help="validate a node or coordinator config without starting anything")
    check.add_argument("--config", required=True, help="node or coordinator TOML config")
    check.set_defaults(func=_cmd_check)

    simulate = sub.add_parser("simulate", help="run one secure aggregation in memory (no network)")
    simulate.add_argument("--nodes", type=int, default=100)
    simulate.add_argument("--dimension", type=int, default=10_000)
    simulate.add_argument("--threshold", type=int, default=None, help="default: the smallest safe one")
    simulate.add_argument("--neighbours", type=int, default=None, help="default: what propose_parameters picks")
    simulate.add_argument("--colluders", type=int, default=None, help="colluding nodes to withstand (default: max(1, ceil(n/5)))")
    simulate.add_argument("--drop-rate", type=float, default=0.1)
    simulate.set_defaults(func=_cmd_simulate)

    # Commands that live in their own modules (each imports its heavy libraries only when run).
    from securefed import analytics_cli, example_data, model_cli, report_cli

    analytics_cli.add_commands(sub)
    model_cli.add_commands(sub)
    report_cli.add_commands(sub)
    example_data.add_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SecureFedError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
