"""Bad-input corpus: malformed inputs through the entry point a user hits, one table row per input.

Every data, config and CLI case runs `itx` in-process (`flows.cli.main`, as the console script
does) on a config in its own folder; two also run as `python -m flows.cli`. Every serving case
posts a JSON body to the served pyfunc through the scoring server's own request handler. Each
case checks the three promises of the README ("Running it yourself", "Serving"):
  1. the one `itx: error:` line names where the problem is (file, line, column or setting) and
     what was expected;
  2. the exit code is 2 (serving: MLflow error code, which the scoring server answers with HTTP 400);
  3. nothing half-done remains: no run folder under the output root, no `.*.tmp` file anywhere
     under the case folder (the temp dir of the gzip/latin-1 copies included), and every file in
     the cache is a complete table.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest
import yaml

from conf.loading import preset_path
from flows.cli import main

# The second tier (make test-slow): every case is a real run of itx, and two are subprocesses.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
TINY = str(preset_path("experiments/tiny.yaml"))
T0 = 1_700_000_000  # 2023-11-14, epoch seconds


# --- the workspace of one case ------------------------------------------------------------------


@dataclass
class Workspace:
    """A case's folder: its inputs, output root, temp dir and the shared MLflow store."""

    folder: Path
    tracking_uri: str

    @property
    def outputs(self) -> Path:
        return self.folder / "outputs"

    def put(self, name: str, content: str | bytes, gz: bool = False, truncate: bool = False) -> Path:
        """Write an input file (gzipped, and cut in half, on request)."""
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        data = content.encode() if isinstance(content, str) else content
        if gz:
            data = gzip.compress(data)
        if truncate:
            data = data[: len(data) // 2]
        path.write_bytes(data)
        return path

    def config(self, document: dict, name: str = "config.yaml") -> Path:
        """A preset extending the tiny one, plus `document`."""
        return self.put(name, yaml.safe_dump({"extends": TINY, **document}, sort_keys=False))

    def run(self, data: dict | None = None, *extra: str, document: dict | None = None) -> list[str]:
        """`itx run` arguments for a config with this data section, writing into this case's folders."""
        config = self.config({**({"data": data} if data else {}), **(document or {})})
        return ["run", str(config), "--output-dir", str(self.outputs),
                "--set", f"tracking.tracking_uri={self.tracking_uri}", *extra]


@dataclass(frozen=True)
class Case:
    """One malformed input: how to build it (returns the `itx` arguments) and the error fragments expected.

    `{dir}` in a fragment stands for the case folder.
    """

    id: str
    build: Callable[[Workspace], list[str]]
    expected: tuple[str, ...]


# --- data: valid bodies, and one source section per adapter ---------------------------------------


def events_csv(rows: int = 3) -> str:
    return "user_id,item_id,timestamp\n" + "".join(f"u{r % 2},i{r},{T0 + r}\n" for r in range(rows))


def events(path: Path, **settings) -> dict:
    return {"source": "events", "events": {"interactions": str(path), **settings}}


def recbole(ws: Workspace, inter: str | bytes, gz: bool = False, truncate: bool = False) -> dict:
    ws.put(f"ds/ds.inter{'.gz' if gz else ''}", inter, gz=gz, truncate=truncate)
    return {"source": "recbole", "recbole": {"path": str(ws.folder / "ds")}}


RECBOLE_HEADER = "user_id:token\titem_id:token\ttimestamp:float\n"


def movielens(ws: Workspace, ratings: str | None = "1::10::5::978300760\n1::11::4::978300761\n",
              users: str | None = "1::F::1::10::48067\n", movies: str | None = "10::Toy Story (1995)::Animation\n"
              ) -> dict:
    for name, text in (("ratings.dat", ratings), ("users.dat", users), ("movies.dat", movies)):
        if text is not None:
            ws.put(f"ml/{name}", text)
    return {"source": "movielens", "movielens": {"path": str(ws.folder / "ml")}}


def review(user: str | None = "u1", item: str = "B01", rating: object = 5.0, timestamp: object = T0 * 1000) -> str:
    fields = {"user_id": user, "parent_asin": item, "rating": rating, "timestamp": timestamp}
    return json.dumps({k: v for k, v in fields.items() if v is not None})


def amazon(ws: Workspace, reviews: str | bytes, gz: bool = False, truncate: bool = False) -> dict:
    ws.put(f"amazon/Food.jsonl{'.gz' if gz else ''}", reviews, gz=gz, truncate=truncate)
    return {"source": "amazon", "amazon": {"path": str(ws.folder / "amazon"), "categories": ["Food"]}}


SEQUENCE_FILES = ("train_A", "train_B", "train_overlap", "valid", "test")


def sequence_files(ws: Workspace, items: str = "item_id\tdomain\tasin\ttitle\n0\tfood\tA0\tTea\n1\tkitchen\tA1\tPot\n",
                   **files: str | bytes) -> dict:
    ws.put("seq/items.tsv", items)
    for name in SEQUENCE_FILES:
        ws.put(f"seq/{name}.txt", files.get(name, "1\t0,1\n"))
    return {"source": "sequence_files", "sequence_files": {"path": str(ws.folder / "seq")}}


def users_with_gender(ws: Workspace) -> tuple[Path, Path]:
    """An event log of 40 users x 8 of 12 items, and a user table with their gender."""
    rows = [f"u{u},i{(u + j) % 12},{T0 + 60 * j}" for u in range(40) for j in range(8)]
    log = ws.put("events.csv", "user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    users = ws.put("users.csv", "user_id,gender\n" + "".join(f"u{u},{'FM'[u % 2]}\n" for u in range(40)))
    return log, users


def parquet(ws: Workspace, name: str, frame: pl.DataFrame) -> Path:
    path = ws.folder / name
    frame.write_parquet(path)
    return path


def directory(ws: Workspace, name: str) -> Path:
    path = ws.folder / name
    path.mkdir(parents=True)
    return path


DATA_CASES = [
    # events: any CSV/TSV/Parquet log
    Case("events-truncated-gzip", lambda ws: ws.run(events(ws.put("events.csv.gz", events_csv(200), gz=True,
                                                                        truncate=True))),
         ("not a valid gzip file", "{dir}/events.csv.gz")),
    Case("events-wrong-separator", lambda ws: ws.run(events(ws.put("events.csv", events_csv().replace(",", ";")))),
         ("{dir}/events.csv: no column 'user_id' (data.events.columns.user)",
          "found columns ['user_id;item_id;timestamp']")),
    Case("events-missing-column", lambda ws: ws.run(events(ws.put("events.csv", "user_id,item_id\nu1,i1\n"))),
         ("{dir}/events.csv: no column 'timestamp' (data.events.columns.time)",
          "found columns ['user_id', 'item_id']")),
    Case("events-misnamed-column",
         lambda ws: ws.run(events(ws.put("events.csv", events_csv()), columns={"user": "customer"})),
         ("{dir}/events.csv: no column 'customer' (data.events.columns.user)",)),
    Case("events-extra-field-in-a-row",
         lambda ws: ws.run(events(ws.put("events.csv", events_csv() + f"u1,i9,{T0},oops\n"))),
         ("{dir}/events.csv: line 5: 4 fields separated by ','", "expected 3 as in the header")),
    Case("events-unparsable-time",
         lambda ws: ws.run(events(ws.put("events.csv", events_csv() + "u1,i9,yesterday\n"))),
         ("{dir}/events.csv: line 5: column 'timestamp' (time) cannot be parsed",
          "expected seconds or ISO-8601 text (found 'yesterday')")),
    Case("events-future-time-in-milliseconds",
         lambda ws: ws.run(events(ws.put("events.csv", events_csv() + f"u1,i9,{T0 * 1000}\n"))),
         ("{dir}/events.csv: line 5: column 'timestamp' (time) is in the future", "milliseconds? divide by 1000")),
    Case("events-empty-user-id", lambda ws: ws.run(events(ws.put("events.csv", events_csv() + f",i9,{T0}\n"))),
         ("{dir}/events.csv: line 5: column 'user_id' (user id) is empty",)),
    Case("events-nan-user-id-in-parquet",
         lambda ws: ws.run(events(parquet(ws, "events.parquet", pl.DataFrame(
             {"user_id": [1.0, float("nan")], "item_id": ["a", "b"], "timestamp": [T0, T0 + 1]})))),
         ("{dir}/events.parquet: column 'user_id' (data.events.columns.user) has type Float64",
          "expected text or integer ids")),
    Case("events-boolean-time-in-parquet",
         lambda ws: ws.run(events(parquet(ws, "events.parquet", pl.DataFrame(
             {"user_id": ["u1"], "item_id": ["a"], "timestamp": [True]})))),
         ("{dir}/events.parquet: column 'timestamp' has type Boolean", "expected seconds, datetimes or text times")),
    Case("events-rating-not-a-number",
         lambda ws: ws.run(events(ws.put("events.csv", f"user_id,item_id,timestamp,rating\nu1,i1,{T0},five\n"),
                                  columns={"rating": "rating"})),
         ("{dir}/events.csv: line 2: column 'rating' (rating) is not a number (found 'five')",)),
    Case("events-duplicate-header",
         lambda ws: ws.run(events(ws.put("events.csv", f"user_id,item_id,item_id,timestamp\nu1,i1,i2,{T0}\n"))),
         ("{dir}/events.csv: line 1: column name(s) ['item_id'] appear more than once",)),
    Case("events-non-utf8-bytes",
         lambda ws: ws.run(events(ws.put("events.csv", events_csv().encode() + b"caf\xe9,i9,1700000000\n"))),
         ("{dir}/events.csv: line 5: not valid UTF-8 text (bytes e9)", "expected a UTF-8 file")),
    Case("events-empty-file", lambda ws: ws.run(events(ws.put("events.csv", ""))),
         ("{dir}/events.csv: file is empty, expected a header line and rows",)),
    Case("events-header-only", lambda ws: ws.run(events(ws.put("events.csv", "user_id,item_id,timestamp\n"))),
         ("{dir}/events.csv: has a header line but no rows",)),
    Case("events-negative-time", lambda ws: ws.run(events(ws.put("events.csv", events_csv() + "u1,i9,-60\n"))),
         ("{dir}/events.csv: interactions column 'timestamp' has 1 negative values (the smallest -60)",
          "expected seconds since 1970")),
    Case("events-file-is-a-directory", lambda ws: ws.run(events(directory(ws, "events.csv"))),
         ("{dir}/events.csv: is a directory, expected a file", "data.events.interactions")),
    Case("events-unknown-file-type", lambda ws: ws.run(events(ws.put("events.json", "{}\n"))),
         ("{dir}/events.json: unknown file type '.json'", "expected .csv, .tsv")),
    Case("events-corrupt-parquet", lambda ws: ws.run(events(ws.put("events.parquet", b"PAR1 not really"))),
         ("{dir}/events.parquet: not a readable Parquet file",)),
    Case("events-target-group-absent-from-the-data",
         lambda ws: (lambda log, users: ws.run(events(log, users=str(users)), "--set", "preprocess.k_core=2",
                                               "--set", "scenario.target=X"))(*users_with_gender(ws)),
         ("scenario.target 'X' does not occur in column 'gender'", "values present: ['F', 'M']")),
    # RecBole atomic files
    Case("recbole-truncated-gzip",
         lambda ws: ws.run(recbole(ws, RECBOLE_HEADER + "u1\ti1\t1\n" * 500, gz=True, truncate=True)),
         ("not a valid gzip file", "{dir}/ds/ds.inter.gz")),
    Case("recbole-wrong-separator",
         lambda ws: ws.run(recbole(ws, RECBOLE_HEADER.replace("\t", ",") + "u1,i1,1\n")),
         ("{dir}/ds/ds.inter: no column 'user_id', 'item_id', 'timestamp'", "found columns")),
    Case("recbole-header-field-without-type",
         lambda ws: ws.run(recbole(ws, "user_id\titem_id:token\ttimestamp:float\nu1\ti1\t1\n")),
         ("{dir}/ds/ds.inter: header field 'user_id' has no ':type'", "expected a header of tab-separated name:type")),
    Case("recbole-unparsable-timestamp",
         lambda ws: ws.run(recbole(ws, RECBOLE_HEADER + "u1\ti1\t1\nu1\ti2\tsoon\n")),
         ("{dir}/ds/ds.inter: line 3: column 'timestamp' has 'soon', expected a number",)),
    Case("recbole-missing-field",
         lambda ws: ws.run(recbole(ws, RECBOLE_HEADER + "u1\ti1\t1\nu1\t2\n")),
         ("{dir}/ds/ds.inter: line 3: 2 tab-separated fields, expected 3",)),
    Case("recbole-non-utf8-bytes",
         lambda ws: ws.run(recbole(ws, (RECBOLE_HEADER + "u1\ti1\t1\n").encode() + b"caf\xe9\ti2\t2\n")),
         ("{dir}/ds/ds.inter: line 3: not valid UTF-8 text",)),
    Case("recbole-empty-file", lambda ws: ws.run(recbole(ws, "")),
         ("{dir}/ds/ds.inter: empty file or empty first line", "expected a header")),
    Case("recbole-folder-missing",
         lambda ws: ws.run({"source": "recbole", "recbole": {"path": str(ws.folder / "nowhere")}}),
         ("{dir}/nowhere: RecBole dataset folder not found", "data.recbole.path")),
    Case("recbole-inter-is-a-directory",
         lambda ws: (directory(ws, "ds/ds.inter"),
                     ws.run({"source": "recbole", "recbole": {"path": str(ws.folder / "ds")}}))[1],
         ("{dir}/ds/ds.inter: is a directory", "expected a file")),
    # MovieLens-1M .dat files
    Case("movielens-wrong-separator", lambda ws: ws.run(movielens(ws, ratings="1\t10\t5\t978300760\n")),
         ("{dir}/ml/ratings.dat: line 1: 1 '::'-separated fields, expected 4 (user_id::item_id::rating::timestamp)",)),
    Case("movielens-unparsable-timestamp",
         lambda ws: ws.run(movielens(ws, ratings="1::10::5::978300760\n1::11::4::noon\n")),
         ("{dir}/ml/ratings.dat: line 2: timestamp 'noon' is not a whole number",)),
    Case("movielens-missing-users-file", lambda ws: ws.run(movielens(ws, users=None)),
         ("{dir}/ml/users.dat: file not found", "data.movielens.download")),
    Case("movielens-empty-ratings", lambda ws: ws.run(movielens(ws, ratings="")),
         ("{dir}/ml/ratings.dat: empty file", "expected '::'-separated lines user_id::item_id::rating::timestamp")),
    # Amazon Reviews JSON lines
    Case("amazon-line-not-json", lambda ws: ws.run(amazon(ws, review() + "\n{\"user_id\": \"u2\",\n")),
         ("{dir}/amazon/Food.jsonl: line 2 is not valid JSON", "expected one JSON object per line")),
    Case("amazon-missing-user-id", lambda ws: ws.run(amazon(ws, review() + "\n" + review(user=None) + "\n")),
         ("{dir}/amazon/Food.jsonl: line 2: field 'user_id' (user id) is missing or empty",)),
    Case("amazon-text-time", lambda ws: ws.run(amazon(ws, review(timestamp="yesterday") + "\n")),
         ("{dir}/amazon/Food.jsonl: line 1: field 'timestamp' is not an integer time (found 'yesterday')",)),
    Case("amazon-truncated-gzip",
         lambda ws: ws.run(amazon(ws, "\n".join(review(item=f"B{i}") for i in range(300)), gz=True, truncate=True)),
         ("not a valid gzip file", "{dir}/amazon/Food.jsonl.gz")),
    Case("amazon-empty-file", lambda ws: ws.run(amazon(ws, "\n")),
         ("{dir}/amazon/Food.jsonl: empty file", "expected one JSON review object per line")),
    # Food-Kitchen sequence files
    Case("sequence-line-without-tab", lambda ws: ws.run(sequence_files(ws, train_A="1\t0,1\n2 0,1\n")),
         ("{dir}/seq/train_A.txt: line 2: expected 'user_index<TAB>item,item,...'",)),
    Case("sequence-item-not-an-integer", lambda ws: ws.run(sequence_files(ws, valid="1\t0,tea\n")),
         ("{dir}/seq/valid.txt: line 1: item id 'tea' is not a non-negative integer",)),
    Case("sequence-extra-field", lambda ws: ws.run(sequence_files(ws, test="1\t0,1\t7\n")),
         ("{dir}/seq/test.txt: line 1: 3 tab-separated fields, expected 2",)),
    Case("sequence-items-missing-column",
         lambda ws: ws.run(sequence_files(ws, items="item_id\tdomain\tasin\n0\tfood\tA0\n1\tkitchen\tA1\n")),
         ("{dir}/seq/items.tsv: missing columns ['title']",)),
    Case("sequence-unknown-item", lambda ws: ws.run(sequence_files(ws, train_B="1\t0,9\n")),
         ("{dir}/seq/items.tsv: item id '9' used in the sequence files (train_B.txt) has no row",)),
    Case("sequence-empty-file", lambda ws: ws.run(sequence_files(ws, train_overlap="")),
         ("{dir}/seq/train_overlap.txt: empty file", "expected lines 'user_index<TAB>item,item,...'")),
    Case("sequence-non-utf8-bytes", lambda ws: ws.run(sequence_files(ws, train_A=b"1\t0,1\n2\t\xff\n")),
         ("{dir}/seq/train_A.txt: line 2: not valid UTF-8 text",)),
]
# Each data case is a pipeline run (~2 s of Prefect flow overhead); these further variants of kinds the
# unmarked cases already cover run in `make test`, not in `make test-fast`.
SLOW = {
    "events-rating-not-a-number", "events-header-only", "events-unknown-file-type", "events-corrupt-parquet",
    "recbole-truncated-gzip", "recbole-header-field-without-type", "recbole-unparsable-timestamp",
    "recbole-missing-field", "recbole-empty-file", "recbole-folder-missing", "recbole-inter-is-a-directory",
    "movielens-unparsable-timestamp", "movielens-missing-users-file", "movielens-empty-ratings",
    "amazon-missing-user-id", "amazon-text-time", "amazon-truncated-gzip", "amazon-empty-file",
    "sequence-line-without-tab", "sequence-item-not-an-integer", "sequence-items-missing-column",
    "sequence-unknown-item", "sequence-empty-file", "sequence-non-utf8-bytes",
}

CONFIG_CASES = [
    Case("config-unknown-key", lambda ws: ws.run(document={"train": {"max_epoch": 3}}),
         ("{dir}/config.yaml: invalid config", "train.max_epoch: unknown key")),
    Case("config-wrong-type", lambda ws: ws.run(document={"train": {"max_epochs": "many"}}),
         ("{dir}/config.yaml: invalid config", "train.max_epochs: Input should be a valid integer")),
    Case("config-out-of-range", lambda ws: ws.run(document={"preprocess": {"k_core": 0}}),
         ("{dir}/config.yaml: invalid config", "preprocess.k_core: Input should be greater than or equal to 1")),
    Case("config-target-group-absent", lambda ws: ws.run(document={"scenario": {"target": "X"}}),
         ("{dir}/config.yaml: invalid config", "scenario.target: 'X' does not occur in data.synthetic.groups")),
    Case("config-source-section-missing", lambda ws: ws.run(document={"data": {"source": "events"}}),
         ("{dir}/config.yaml: invalid config", "data.events: section missing for data.source=events")),
    Case("config-contradictory-event-filter",
         lambda ws: ws.run({"source": "events", "events": {"interactions": "e.csv", "keep_events": ["buy"]}}),
         ("{dir}/config.yaml: invalid config", "keep_events needs columns.event")),
    Case("config-invalid-yaml",
         lambda ws: ["validate", str(ws.put("config.yaml", "train:\n  max_epochs: [3\n"))],
         ("{dir}/config.yaml: not valid YAML", "line 3, column 1")),
    Case("config-non-utf8-bytes",
         lambda ws: ["validate", str(ws.put("config.yaml", "seed: 1\nname: caf\xe9\n".encode("latin-1")))],
         ("{dir}/config.yaml: line 2: not valid UTF-8 text (byte 0xe9)", "expected a UTF-8 YAML file")),
    Case("config-is-a-directory", lambda ws: ["run", str(directory(ws, "config.yaml")), "--output-dir",
                                              str(ws.outputs)],
         ("{dir}/config.yaml: is a directory (expected a YAML file)",)),
    Case("config-text-model-folder-missing",
         lambda ws: ws.run(document={"text": {"model_path": str(ws.folder / "no-model")}, "models": [
             {"kind": "popularity"}, {"kind": "bert_transfer", "name": "bert", "train_on": "pooled",
                                      "init": "scratch"}]}),
         ("text model folder {dir}/no-model: folder does not exist", "text.model_path")),
    Case("config-file-missing", lambda ws: ["run", str(ws.folder / "absent.yaml"), "--output-dir", str(ws.outputs)],
         ("{dir}/absent.yaml: config file not found (expected a YAML file)",)),
]

CLI_CASES = [
    Case("cli-set-without-equals", lambda ws: ws.run(None, "--set", "train.max_epochs"),
         ("--set 'train.max_epochs': expected key.path=value",)),
    Case("cli-set-list-index-out-of-range", lambda ws: ws.run(None, "--set", "models.7.name=x"),
         ("--set 'models.7.name=x': 'models.7' needs a list index below 3",)),
    Case("cli-run-name-with-a-path", lambda ws: ws.run(None, "--run-name", "../elsewhere"),
         ("{dir}/config.yaml: invalid config", "output.run_name: must match")),
    Case("cli-run-name-already-taken",
         lambda ws: (directory(ws, "outputs/taken"), ws.run(None, "--run-name", "taken"))[1],
         ("output.run_name: run folder {dir}/outputs/taken already exists",)),
    Case("cli-output-dir-is-a-file", lambda ws: ws.run(None, "--output-dir", str(ws.put("outputs-file", "x"))),
         ("output.root (--output-dir): {dir}/outputs-file is a file; expected a folder",)),
    Case("cli-unknown-command", lambda ws: ["rnu", TINY], ("argument command: invalid choice: 'rnu'",)),
    Case("cli-unknown-option", lambda ws: ws.run(None, "--epochs", "3"), ("unrecognized arguments: --epochs 3",)),
]

CASES = DATA_CASES + CONFIG_CASES + CLI_CASES


# --- running a case once ------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a case's run left: exit code, the error lines and everything under the output root."""

    code: int
    errors: list[str]
    workspace: Workspace
    before: set[Path] = field(default_factory=set)


OUTCOMES: dict[str, Outcome] = {}


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory) -> str:
    """One MLflow store for every case: creating a sqlite store costs seconds, a run in it milliseconds."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def outcome(case: Case, tmp_path_factory, tracking_uri: str) -> Outcome:
    """Run `itx` for the case (once per session) in its folder, with the temp dir inside it."""
    if case.id not in OUTCOMES:
        ws = Workspace(tmp_path_factory.mktemp(case.id), tracking_uri)
        argv = case.build(ws)
        before = set(ws.outputs.rglob("*")) if ws.outputs.exists() else set()
        # Not capsys: Prefect's log handler keeps the stream it first saw, and a closed capture file
        # would make it complain at exit; this buffer is never closed.
        stderr = io.StringIO()
        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stderr(stderr):
            patch.chdir(ws.folder)
            (ws.folder / "tmp").mkdir()
            patch.setattr(tempfile, "tempdir", str(ws.folder / "tmp"))  # gzip / latin-1 copies land here
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse errors
                code = exit_.code
        errors = [line for line in stderr.getvalue().splitlines() if line.startswith("itx") and ": error: " in line]
        OUTCOMES[case.id] = Outcome(code, errors, ws, before)
    return OUTCOMES[case.id]


def expected_fragments(case: Case, ws: Workspace) -> list[str]:
    return [fragment.replace("{dir}", str(ws.folder)) for fragment in case.expected]


def run_folders(result: Outcome) -> list[Path]:
    """Folders a failed run created under the output root (the cache folder is not a run folder)."""
    outputs = result.workspace.outputs
    if not outputs.exists():
        return []
    return [entry for entry in outputs.iterdir() if entry.name != "cache" and entry not in result.before]


def half_written_files(result: Outcome) -> list[str]:
    """Temporary files anywhere under the case folder, and cache files that are not complete tables."""
    ws = result.workspace
    found = [f"temporary file {path}" for path in ws.folder.rglob(".*.tmp")]
    for path in (ws.outputs / "cache").rglob("*.parquet"):
        try:
            pl.read_parquet_schema(path)
        except Exception as error:  # noqa: BLE001 - any failure to read is the finding
            found.append(f"unreadable cache file {path}: {error}")
    return found


def param(case: Case, *marks) -> pytest.param:
    return pytest.param(case, id=case.id, marks=[*marks, *([pytest.mark.slow] if case.id in SLOW else [])])


@pytest.mark.parametrize("case", [param(case) for case in CASES])
def test_bad_input_is_rejected_naming_where_and_what_was_expected(case, tmp_path_factory, tracking_uri):
    result = outcome(case, tmp_path_factory, tracking_uri)
    assert result.code == 2, result.errors
    assert len(result.errors) == 1, result.errors
    for fragment in expected_fragments(case, result.workspace):
        assert fragment in result.errors[0]


@pytest.mark.parametrize("case", [param(case) for case in CASES])
def test_bad_input_leaves_no_temporary_or_half_written_file(case, tmp_path_factory, tracking_uri):
    result = outcome(case, tmp_path_factory, tracking_uri)
    assert result.code == 2
    assert half_written_files(result) == []


@pytest.mark.parametrize("case", [param(c) for c in CASES])
def test_bad_input_leaves_no_run_folder(case, tmp_path_factory, tracking_uri):
    result = outcome(case, tmp_path_factory, tracking_uri)
    assert result.code == 2
    assert run_folders(result) == []


# --- the same through a subprocess, as a shell user runs it -------------------------------------


@pytest.mark.parametrize(("args", "expected"), [
    (lambda ws: ws.run(document={"train": {"batch_size": 0}}), "train.batch_size: Input should be greater than"),
    (lambda ws: ["validate", str(ws.put("config.yaml", b"seed: \xff\n"))], "line 1: not valid UTF-8 text"),
], ids=["config-out-of-range", "config-non-utf8"])
def test_console_command_prints_one_error_line_and_exits_2(args, expected, tmp_path):
    ws = Workspace(tmp_path, f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = subprocess.run([sys.executable, "-m", "flows.cli", *args(ws)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("itx: error: ")]
    assert len(errors) == 1 and str(tmp_path / "config.yaml") in errors[0] and expected in errors[0]
    assert not ws.outputs.exists() and not (tmp_path / "mlflow.db").exists()


# --- serving: the pyfunc behind `mlflow models serve` -------------------------------------------


ITEMS = [f"i{n:02d}" for n in range(1, 13)]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A popularity model over 12 items, packaged and saved as the TopKRecommender pyfunc, loaded back."""
    import mlflow.pyfunc
    import torch

    from models.kinds import build_model
    from models.serving import TopKRecommender, signature
    from tasks.io import TableRef, write_parquet
    from tasks.data.preprocessing import PreparedData
    from tasks.ops.registry import package_model
    from tasks.modelling.training import TrainedModel

    root = tmp_path_factory.mktemp("served")
    model = build_model("popularity", len(ITEMS) + 1, {})
    model.counts = torch.arange(len(ITEMS) + 1, dtype=torch.float)
    model.save(root / "model.pt")
    items = pl.DataFrame({"item_idx": range(1, len(ITEMS) + 1), "item_id": ITEMS, "domain": "shop", "role": "all"},
                         schema_overrides={"item_idx": pl.Int32})
    dummy = TableRef(str(root / "unused"), "0")
    prepared = PreparedData(events=dummy, sequences=dummy, users=dummy,
                            items=write_parquet(items, root / "items.parquet"), n_users=1,
                            n_items=len(ITEMS) + 1, n_events=0, dropped_events=0)
    trained = TrainedModel(name="popularity", kind="popularity", model_file=TableRef(str(root / "model.pt"), "f"),
                           epochs=0, best_valid_ndcg=None, seconds=0.0, training_run_id=None)
    artifacts = package_model(trained, prepared, 10, root / "package")
    mlflow.pyfunc.save_model(root / "pyfunc", python_model=TopKRecommender(), artifacts=artifacts,
                             signature=signature(), pip_requirements=[])
    return mlflow.pyfunc.load_model(str(root / "pyfunc"))


def invoke(pyfunc, body: str | dict):
    """The scoring server's handler of POST /invocations (JSON); returns its response or raises MlflowException."""
    from mlflow.pyfunc.scoring_server import invocations

    return invocations(body if isinstance(body, str) else json.dumps(body), "application/json", pyfunc, None)


def records(*rows: dict, **params) -> dict:
    return {"dataframe_records": list(rows), **({"params": params} if params else {})}


def serving_case(case_id: str, body: str | dict, code: str, expected: tuple[str, ...]):
    return pytest.param(body, code, expected, id=case_id)


SERVING_CASES = [
    serving_case("serving-no-history-column", records({"items": ["i01"]}), "INVALID_PARAMETER_VALUE",
                 ("input needs a 'history' column", "got columns ['items']")),
    serving_case("serving-history-is-a-string", records({"history": "i01"}), "INVALID_PARAMETER_VALUE",
                 ("row 0: 'history' must be a list of item id strings, got str",)),
    serving_case("serving-ids-are-numbers", records({"history": [1, 2]}), "INVALID_PARAMETER_VALUE",
                 ("row 0: 'history' must hold item id strings, got int 1",)),
    serving_case("serving-columnar-inputs", {"inputs": {"history": [[1, 2]]}}, "INVALID_PARAMETER_VALUE",
                 ("row 0: 'history' must hold item id strings",)),
    serving_case("serving-unknown-item-ids", records({"history": ["i01", "nope", "gone"]}), "INVALID_PARAMETER_VALUE",
                 ("row 0: 2 unknown item id(s)", "'nope', 'gone'")),
    serving_case("serving-empty-history", records({"history": ["i01"]}, {"history": []}), "INVALID_PARAMETER_VALUE",
                 ("row 1: empty history",)),
    serving_case("serving-k-zero", records({"history": ["i01"]}, k=0), "INVALID_PARAMETER_VALUE",
                 ("params.k must be in 1..12", "got 0")),
    serving_case("serving-k-negative", records({"history": ["i01"]}, k=-3), "INVALID_PARAMETER_VALUE",
                 ("params.k must be in 1..12", "got -3")),
    serving_case("serving-k-huge", records({"history": ["i01"]}, k=10**12), "INVALID_PARAMETER_VALUE",
                 ("params.k must be in 1..12", "got 1000000000000")),
    serving_case("serving-k-not-an-integer", records({"history": ["i01"]}, k="five"), "INVALID_PARAMETER_VALUE",
                 ("'k'", "long", "five")),
    serving_case("serving-no-rows", records(), "INVALID_PARAMETER_VALUE", ("input needs a 'history' column",)),
    serving_case("serving-oversized-payload", records(*[{"history": ["i01"]}] * 10_001), "INVALID_PARAMETER_VALUE",
                 ("too many rows: 10001; at most 10000 per request",)),
    serving_case("serving-request-over-the-byte-limit", records({"history": ["i01", "x" * 1_100_000]}),
                 "INVALID_PARAMETER_VALUE", ("request too large: 1100003 bytes of item ids; at most 1000000",)),
    serving_case("serving-huge-unknown-id-not-echoed", records({"history": ["i01", "y" * 900_000]}),
                 "INVALID_PARAMETER_VALUE", ("row 0: 1 unknown item id(s)", "... (900002 characters)")),
    serving_case("serving-nothing-left-to-recommend", records({"history": ITEMS}), "INVALID_PARAMETER_VALUE",
                 ("row 0: nothing left to recommend", "12 distinct items seen")),
    serving_case("serving-not-json", '{"dataframe_records": [{"history": ["i01"]}', "BAD_REQUEST",
                 ("Ensure that input is a valid JSON formatted string",)),
    serving_case("serving-json-list-not-object", '[{"history": ["i01"]}]', "BAD_REQUEST", ("Received a list",)),
]


@pytest.mark.parametrize(("body", "code", "expected"), SERVING_CASES)
def test_bad_request_gets_400_naming_what_was_wrong(served, body, code, expected):
    from mlflow.exceptions import MlflowException

    with pytest.raises(MlflowException) as raised:
        invoke(served, body)
    assert raised.value.error_code == code
    assert raised.value.get_http_status_code() == 400
    for fragment in expected:
        assert fragment in raised.value.message
    assert len(raised.value.message) < 500  # what was sent is quoted, if at all, as a short prefix
    # The model still answers a good request after a bad one: a rejected request changes nothing.
    good = json.loads(invoke(served, records({"history": ["i12"]}, k=3)).response)
    assert good["predictions"][0]["item_ids"] == ["i11", "i10", "i09"]


def test_corpus_covers_at_least_thirty_distinct_inputs_across_every_entry_point():
    ids = [case.id for case in CASES] + [case.id for case in SERVING_CASES]
    assert len(ids) == len(set(ids)) >= 30
    prefixes = {case_id.split("-")[0] for case_id in ids}
    assert {"events", "recbole", "movielens", "amazon", "sequence", "config", "cli", "serving"} <= prefixes
