"""`itx`: run the pipeline from the command line.

  itx run [CONFIG] [--set key=value ...] [--output-dir DIR] [--run-name NAME] [--refresh-cache]
  itx demo [--output-dir DIR]        the synthetic shop (metrics per user group, recommendations with
                                     their reasons, the registered champion), then a transfer run with
                                     its transfer-gain report
  itx validate [CONFIG] [--set ...] [--check-data]  check a config (and its inputs) and print it resolved
  itx retrain [CONFIG] --new-events PATH [--finetune-epochs N] [--force] [--set ...]
                                     append new events, fine-tune the registered champion, gate, promote
  itx serve [CONFIG] [--port 4200] [--cron "0 3 * * *"] [--new-events PATH]
                                     start a local Prefect server (UI) and serve the pipeline and
                                     nightly-retrain deployments until Ctrl-C
  itx reidentify RUN_DIR [--out FILE]
                                     with the pseudonym key present, write a pseudonymised run's
                                     recommendations with raw user ids to a new file

Exit code 0 on success; otherwise one line `itx: error: <reason>` on stderr (with --verbose, after the
traceback) and exit code 2 for bad configuration or data, 1 for anything else. Input files are checked
before any server, MLflow run or run folder starts, so bad data fails in seconds.
"""
import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Any

import flows  # noqa: F401  (sets offline-safe environment defaults before Prefect is imported)
from conf.loading import ConfigError, dump_config, load_config, preset_path
from conf.schema import PipelineConfig
from flows.process import (EXIT_CODES, EXIT_GRACE_S, STOP_GRACE_S, Interrupted, leave_within,
                           prepare_prefect_database, start_prefect_in_background, stop_on_signals,
                           stop_temporary_server, until_signalled, without_heartbeats_on_a_temporary_server)

# (title, preset relative to conf/ (None: base.yaml), overrides) of each demo run: the pipeline on the
# synthetic shop with its per-group metrics, then the transfer scenario whose structure transfer exploits.
DEMO_RUNS = (
    ("the synthetic shop, next-item models", None, []),
    ("transfer M -> F, group F with transitions of its own", "experiments/demo_transfer.yaml", []),
)
DEMO_USERS_SHOWN = 3  # users whose recommendations and reasons the demo prints


def build_parser() -> argparse.ArgumentParser:
    """The `itx` argument parser."""
    parser = argparse.ArgumentParser(prog="itx", description="interest-transfer pipeline")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (("run", "run the pipeline"), ("validate", "validate a config and print it resolved")):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("config", nargs="?", help="YAML preset (default: the packaged conf/base.yaml)")
        command.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                             help="override a config value, e.g. --set train.max_epochs=5 (repeatable)")
        command.add_argument("--output-dir", help="root folder for run folders (output.root)")
        command.add_argument("--run-name", help="run folder name (output.run_name)")
    commands.choices["validate"].add_argument("--check-data", action="store_true",
                                              help="also check what the config refers to (input files, text model, "
                                              "output folder, pseudonym key) as `itx run` does before it starts")
    commands.choices["run"].add_argument("--refresh-cache", action="store_true",
                                         help="recompute every stage instead of reusing cached results")
    retrain = commands.add_parser("retrain", help="append new events and fine-tune the registered champion")
    retrain.add_argument("config", nargs="?", help="YAML preset of the champion's run (default: conf/base.yaml)")
    retrain.add_argument("--new-events", help="event log (CSV/TSV/Parquet with user_id, item_id, timestamp "
                         "columns) or a folder of them; files already appended are skipped")
    retrain.add_argument("--finetune-epochs", type=int, default=3, help="most epochs of the fine-tune (default 3)")
    retrain.add_argument("--force", action="store_true", help="fine-tune even when no new event arrived")
    retrain.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config value (repeatable)")
    retrain.add_argument("--output-dir", help="root folder for run folders and the event store (output.root)")
    serve = commands.add_parser("serve", help="start the Prefect UI and serve the deployments")
    serve.add_argument("config", nargs="?", help="YAML preset for the deployments' default parameters")
    serve.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    serve.add_argument("--output-dir", help="root folder for run folders (output.root)")
    serve.add_argument("--port", type=int, default=4200, help="Prefect server port on 127.0.0.1 (default 4200)")
    serve.add_argument("--cron", default="0 3 * * *", help="schedule of the retraining deployment (default nightly 03:00 UTC)")
    serve.add_argument("--new-events", default="incoming", help="landing folder the scheduled retrain reads (default ./incoming)")
    reidentify = commands.add_parser("reidentify", help="map a pseudonymised run's recommendations back to raw "
                                     "user ids (needs the pseudonym key)")
    reidentify.add_argument("run_dir", metavar="RUN_DIR", help="a finished run folder (config.yaml, recommendations)")
    reidentify.add_argument("--out", help="file to write (.parquet or .csv; default RUN_DIR/"
                            "recommendations_reidentified.parquet); never the run's own export")
    demo = commands.add_parser("demo", help="run the synthetic shop and a transfer scenario, with their reports")
    demo.add_argument("--output-dir", help="root folder for run folders (output.root)")
    for command in commands.choices.values():
        command.add_argument("--verbose", action="store_true", help="on an error, also print its traceback")
    return parser


def config_from_args(args: argparse.Namespace, extra: list[str] = ()) -> PipelineConfig:
    """The validated config named by the arguments, with --set and folder options applied."""
    overrides = [*extra, *getattr(args, "overrides", [])]
    if args.output_dir:
        overrides.append(f"output.root={args.output_dir}")
    if getattr(args, "run_name", None):
        overrides.append(f"output.run_name={args.run_name}")
    config = load_config(getattr(args, "config", None), overrides)
    changed = [*extra, *getattr(args, "overrides", [])]
    if changed and config.output.description is None:  # what sets this run apart from its preset, for MLflow
        note = "settings changed from the preset: " + ", ".join(changed)
        config = config.model_copy(update={"output": config.output.model_copy(update={"description": note})})
    return config


def metrics_table(metrics_csv: Path, title: str):
    """A rich table of the test metrics at K=10 per model, with NDCG@10 per user group."""
    import polars as pl
    from rich.table import Table

    metrics = pl.read_csv(metrics_csv).filter(pl.col("split") == "test")
    k = 10 if 10 in metrics["k"].to_list() else metrics["k"].max()
    table = Table(title=title)
    table.add_column("model")
    names = ["ndcg", "hit", "mrr", "precision", "recall", "f1"]
    groups = sorted(set(metrics["group"].to_list()) - {"all"})
    for name in names:
        table.add_column(f"{name}@{k}", justify="right")
    for group in groups:
        table.add_column(f"ndcg@{k} {group}", justify="right")
    at_k = metrics.filter(pl.col("k") == k)
    for model in at_k["model"].unique(maintain_order=True).to_list():
        rows = at_k.filter(pl.col("model") == model)

        def value(metric: str, group: str) -> str:
            cell = rows.filter((pl.col("metric") == metric) & (pl.col("group") == group))["value"]
            return f"{cell.item():.4f}" if len(cell) else "-"

        table.add_row(model, *[value(n, "all") for n in names], *[value("ndcg", g) for g in groups])
    return table


def check_inputs(config: PipelineConfig) -> None:
    """What the config refers to (output folder, pseudonym key, text model) and its input data, checked
    without creating anything: bad settings and bad input fail in seconds, before Prefect, MLflow or a run folder."""
    from tasks.data.ingestion import check_source
    from tasks.ops.preflight import check_references

    check_references(config)
    check_source(config.data, config.seed)


def run_pipeline(config: PipelineConfig):
    """Check the inputs, then run the pipeline flow (a temporary Prefect server starts if none is configured)
    until it ends or a signal stops it."""
    check_inputs(config)
    with stop_on_signals():
        wait_for_prefect = start_prefect_in_background()
        from flows.pipeline import pipeline_flow

        wait_for_prefect()
        with without_heartbeats_on_a_temporary_server():
            return until_signalled(lambda: pipeline_flow(config))


def report(result, console, title: str) -> None:
    """Print the metrics table and where the run's outputs are."""
    console.print(metrics_table(Path(result.metrics.path), title))
    console.print(f"run folder:      {result.run_dir}")
    console.print(f"metrics:         {result.metrics.path}")
    console.print(f"recommendations: {result.recommendations.parquet.path} (model {result.recommendations.model})")
    gain = result.run_dir / "transfer_gain.csv"
    if gain.exists():
        import polars as pl

        from tasks.modelling.transfer_report import format_gain_tables

        console.print(format_gain_tables(pl.read_csv(gain)), markup=False, highlight=False)
        console.print(f"transfer gain:   {gain} (plots: transfer_gain_*.png)")
    console.print(f"MLflow run:      {result.mlflow_run_id} in {result.tracking_uri}")


def recommendations_preview(result, n_users: int) -> str:
    """The first users' top-5 recommendations by title, each with the history items that led to it."""
    import polars as pl

    titles = dict(pl.read_parquet(result.prepared.items.path, columns=["item_id", "title"]).iter_rows())
    recommendations = pl.read_parquet(result.recommendations.parquet.path)
    users = recommendations["user_id"].unique(maintain_order=True).head(n_users).to_list()
    lines = [f"\nTop 5 for {n_users} users from {result.recommendations.model}, each with the history items that "
             "point to it most:"]
    for user in users:
        lines.append(f"  user {user}")
        for row in recommendations.filter((pl.col("user_id") == user) & (pl.col("rank") <= 5)).iter_rows(named=True):
            because = ", ".join(titles.get(item, item) for item in row["reason_item_ids"][:2]) or "popular overall"
            lines.append(f"    {row['rank']}. {titles.get(row['item_id'], row['item_id'])}  (because: {because})")
    return "\n".join(lines)


def demo_next_steps(result, config: PipelineConfig) -> str:
    """Where the champion is and the commands that open the UIs and serve it."""
    from tasks.ops.artifacts import MLFLOW_UI_URL, mlflow_experiment_url
    from tasks.ops.registry import registered_name
    from tasks.ops.tracking import experiment_of

    uri, name = result.tracking_uri, registered_name(config)
    runs_page = mlflow_experiment_url(MLFLOW_UI_URL, experiment_of(uri, result.mlflow_run_id)[0])
    return "\n".join([
        f"\nRegistered champion: models:/{name}@champion, in the MLflow registry at {uri}",
        "MLflow UI (runs, curves, registry):",
        f"  .venv/bin/mlflow ui --backend-store-uri {uri} --port 5000",
        f"  then open {runs_page}",
        "Prefect UI (the flow runs above, a Run button for the pipeline):",
        "  .venv/bin/itx serve",
        "  then open http://127.0.0.1:4200",
        "Serve the champion over HTTP (curl example: docs/operations.md, Serving):",
        f"  source .venv/bin/activate && MLFLOW_TRACKING_URI={uri} mlflow models serve -m models:/{name}@champion "
        "--env-manager local --port 5055",
    ])


def retrain(args: argparse.Namespace, console) -> int:
    """`itx retrain`: the incremental flow, then where its outputs are and what the gate decided."""
    from conf.schema import EventLogConfig
    from flows.retrain import retrain_flow

    config = config_from_args(args)
    batch = EventLogConfig(interactions=args.new_events) if args.new_events else None
    prepare_prefect_database()
    with without_heartbeats_on_a_temporary_server():
        result = until_signalled(lambda: retrain_flow(config, batch, args.finetune_epochs, args.force))
    if result.run_dir is None:
        console.print("no new events: nothing to retrain")
        return 0
    console.print(f"run folder:      {result.run_dir}")
    console.print(f"gate:            {result.decision.metric}: {result.decision.reason}")
    console.print(f"registry:        {'promoted as version ' + result.version if result.version else 'champion kept'}")
    return 0


def reidentify(args: argparse.Namespace, console) -> int:
    """`itx reidentify`: the run's recommendations with raw user ids, in a new file."""
    from tasks.ops.reidentify import reidentify_run

    result = reidentify_run(Path(args.run_dir), Path(args.out) if args.out else None)
    console.print(f"recommendations with raw user ids ({result.users} users, {result.rows} rows): {result.path}",
                  markup=False, highlight=False)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `itx` console script."""
    args = build_parser().parse_args(argv)
    from rich.console import Console

    # Wide enough for the metrics table when output goes to a file or a CI log (rich assumes 80).
    console = Console() if sys.stdout.isatty() else Console(width=160)
    try:
        if args.command == "validate":
            config = config_from_args(args)
            if args.check_data:
                check_inputs(config)
            console.print(dump_config(config), end="", markup=False, highlight=False)
            return 0
        if args.command == "retrain":
            with stop_on_signals():
                return retrain(args, console)
        if args.command == "reidentify":
            return reidentify(args, console)
        if args.command == "serve":
            from flows.deployments import serve_deployments

            received: list[int] = []

            def stop_serving(signum: int, frame: Any) -> None:  # SIGTERM ends serving as Ctrl-C does
                received.append(signum)
                raise KeyboardInterrupt

            for signum in EXIT_CODES:
                signal.signal(signum, stop_serving)
            serve_deployments(config_from_args(args), port=args.port, cron=args.cron, new_events=args.new_events)
            # Serving only ends on a signal: ours, or SIGTERM caught by Prefect's runner once it runs (it then
            # cancels the flow runs in progress, which end marked interrupted, and returns).
            stopped_by = received[0] if received else signal.SIGTERM
            print(f"itx: serving stopped by {signal.Signals(stopped_by).name}", file=sys.stderr)
            return EXIT_CODES[stopped_by]
        if args.command == "run":
            if args.refresh_cache:
                os.environ["PREFECT_TASKS_REFRESH_CACHE"] = "true"
            config = config_from_args(args)
            report(run_pipeline(config), console, f"{config.name}: test metrics ({config.split.protocol})")
        else:
            configs, results = [], []
            for title, preset, overrides in DEMO_RUNS:
                args.config = str(preset_path(preset)) if preset else None
                configs.append(config_from_args(args, overrides))
                results.append((title, run_pipeline(configs[-1])))
            for title, result in results:
                report(result, console, f"demo: test metrics, {title}")
            shop_config, shop = configs[0], results[0][1]
            console.print(recommendations_preview(shop, DEMO_USERS_SHOWN), markup=False, highlight=False,
                          soft_wrap=True)
            console.print(demo_next_steps(shop, shop_config), markup=False, highlight=False, soft_wrap=True)
        return 0
    except Interrupted as stop:
        if stop.where == "start-up":
            outcome = "nothing had started"
        elif stop.clean:
            outcome = ("the run is marked interrupted (MLflow runs KILLED, registry unchanged); run the same command "
                       "again to resume (finished stages come from the cache, training from its last checkpoint)")
        else:
            outcome = (f"it did not end within {STOP_GRACE_S:.0f} s and was left (the next run marks it killed); "
                       "run the same command again to resume")
        print(f"itx: {stop}: {outcome}", file=sys.stderr)
        if stop.where == "start-up":  # the server may still be starting: wait for it, then stop it
            stop_temporary_server()
        leave_within(EXIT_GRACE_S if stop.clean else 0.0, stop.code)
        return stop.code
    except (ConfigError, ValueError, FileNotFoundError, FileExistsError) as err:
        print_traceback_if(args.verbose)
        print(f"itx: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 - the CLI promises one line, the traceback is in the logs
        print_traceback_if(args.verbose)
        print(f"itx: error: {type(err).__name__}: {err}", file=sys.stderr)
        return 1


def print_traceback_if(verbose: bool) -> None:
    """With --verbose, the traceback of the error being handled, before its one-line summary."""
    if verbose:
        import traceback

        traceback.print_exc(file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
