"""The Datasets tab: a table of stored datasets; for the selected one, `data show`'s analysis
(token counts from a child `mlxlora data show --model`, since tokenizers need transformers;
domain-term density with the term list chosen, as `--terms`) and a preview of its first
records."""

from __future__ import annotations

import asyncio
import json
import sys

from rich.text import Text
from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import (
    Button,
    DataTable,
    Input,
    Label,
    Select,
    Static,
    TabbedContent,
    TabPane,
)

from mlxlora.data import analysis, store
from mlxlora.errors import DataError, MlxloraError
from mlxlora.fmt import counted
from mlxlora.tui.screens.datasets.import_dialog import ImportDialog
from mlxlora.tui.screens.datasets.view import load_report, preview_text, report_text
from mlxlora.tui.widgets.confirm import Confirm

COLUMNS = ("name", "type", "records", "created", "description")
BROKEN = "broken:"  # row key prefix of a store directory that is not a readable dataset
NO_TERMS, TERMS_FILE = "", "file"  # the term list choices besides the bundled lists
TERM_LISTS = [
    ("none", NO_TERMS),
    *((f"{name} (bundled)", name) for name in analysis.BUNDLED_TERMS),
    ("a file of terms…", TERMS_FILE),
]


class DatasetsTab(Vertical):
    """Stored datasets, the import form, and the analysis and records of the selected one."""

    DEFAULT_CSS = """
    DatasetsTab #ds-table { height: 1fr; min-height: 4; max-height: 12; }
    DatasetsTab #ds-detail { height: 2fr; }
    DatasetsTab #ds-tokens { height: 1; }
    DatasetsTab #ds-model { width: 1fr; }
    DatasetsTab #ds-count { margin-left: 1; }
    DatasetsTab #ds-terms-row { height: 1; }
    DatasetsTab #ds-terms { width: 24; margin-left: 1; }
    DatasetsTab #ds-terms-file { width: 1fr; margin-left: 1; display: none; }
    DatasetsTab #ds-status { height: auto; max-height: 3; color: $text-muted; }
    """
    BINDINGS = [
        Binding("i", "import_dataset", "Import"),
        Binding("d", "delete_dataset", "Delete"),
        Binding("r", "refresh", "Refresh"),
    ]

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.selected: str | None = None
        self.broken: dict[str, str] = {}  # row key -> why that directory is not a dataset
        self.report: dict | None = None  # the selected dataset's, re-rendered on resize
        self.terms_spec: str | None = None  # `--terms`: a bundled list or a file
        self.terms: tuple[str, list[str]] | None = None  # its (label, terms)
        self.counted_with: str | None = None  # the model of the report's token counts
        self.status_text = ""  # what #ds-status says

    def compose(self) -> ComposeResult:
        yield DataTable(id="ds-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="ds-status", markup=False)
        with TabbedContent(id="ds-detail"):
            with TabPane("Analysis", id="ds-analysis"):
                with Horizontal(id="ds-tokens"):
                    yield Input(
                        placeholder="model for token counts (builtin:tiny, a hub id, a path)",
                        id="ds-model",
                        compact=True,
                    )
                    yield Button("Count tokens", id="ds-count", compact=True)
                with Horizontal(id="ds-terms-row"):
                    yield Label("domain terms")
                    yield Select(
                        TERM_LISTS, value=NO_TERMS, allow_blank=False, id="ds-terms", compact=True
                    )
                    yield Input(
                        placeholder="terms file, one term a line (Enter)",
                        id="ds-terms-file",
                        compact=True,
                    )
                with VerticalScroll(id="ds-report-scroll"):
                    yield Static("", id="ds-report")
            with TabPane("Preview", id="ds-preview"):
                with VerticalScroll(id="ds-records-scroll"):
                    yield Static("", id="ds-records")

    def on_mount(self) -> None:
        self.query_one("#ds-table", DataTable).add_columns(*COLUMNS)
        self.action_refresh()

    def on_show(self) -> None:
        """Focus the table when the tab comes into view, so its keys work at once. Datasets
        imported or deleted meanwhile (`mlxlora data import` in another terminal, as the
        tutorial shows beside each studio step) join the table, as the Train tab's choices."""
        if self.app.focused is None or self.app.focused not in self.query("*"):
            self.query_one("#ds-table", DataTable).focus()
        self.action_refresh()

    # --- the table ------------------------------------------------------------------------

    def action_refresh(self, select: str | None = None) -> None:
        """Re-read the store; keep (or move to) the `select`ed dataset's row."""
        table = self.query_one("#ds-table", DataTable)
        table.clear()
        for meta in store.list_datasets():
            created = meta.created[:16].replace("T", " ")
            table.add_row(
                meta.name, meta.type, f"{meta.records:,}", created, meta.description, key=meta.name
            )
        self.broken = {BROKEN + name: problem for name, problem in store.broken_datasets()}
        for key, problem in self.broken.items():
            name = key.removeprefix(BROKEN)
            table.add_row(
                Text(name, style="red"), Text("error", style="red"), "", "", problem, key=key
            )
        if table.row_count == 0:
            self.selected = None
            self._status("no datasets yet: press i to import a .json or .jsonl file")
            self._show_report(Text(""), Text(""))
            return
        self._status(f"{counted(table.row_count, 'dataset')} (i import, d delete)")
        wanted = select or self.selected
        keys = [row.value for row in table.rows]
        table.move_cursor(row=keys.index(wanted) if wanted in keys else 0)

    @on(DataTable.RowHighlighted, "#ds-table")
    def _row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        key = event.row_key.value
        if key is None or key == self.selected:
            return
        self.selected = key
        self.counted_with = None  # a new dataset is read without token counts
        if key in self.broken:
            self._show_report(Text(self.broken[key], style="red"), Text(""))
            return
        self._show_report(Text(f"reading {key}…"), Text(""))
        self._load(key, self.terms)

    # --- the selected dataset -------------------------------------------------------------

    @work(thread=True, exclusive=True, group="load", exit_on_error=False)
    def _load(self, name: str, terms: tuple[str, list[str]] | None) -> None:
        """Reads and analyses every record: off the UI thread. A thread runs on when a newer
        load cancels it: its analysis, for another dataset or term list, must not land after
        the newer one."""
        try:
            report, records = load_report(name, terms)
        except MlxloraError as exc:
            self.app.call_from_thread(self._loaded, (name, terms), None, [], str(exc))
            return
        self.app.call_from_thread(self._loaded, (name, terms), report, records, None)

    def _loaded(self, read: tuple, report: dict | None, records: list, error: str | None) -> None:
        if read != (self.selected, self.terms):  # the user moved on meanwhile
            return
        if report is None:
            self._show_report(Text(error or "", style="red"), Text(""))
            return
        preview = preview_text(records, report["type"])
        if self.counted_with:
            # the report with token counts came first (no read starts once it has): it stays
            self.query_one("#ds-records", Static).update(preview)
            return
        self._show_report(Text(""), preview)
        self._set_report(report)

    def _set_report(self, report: dict | None) -> None:
        self.report = report
        if report is not None:
            # The app's width, not the scroll area's: that is 0 while the tab is hidden.
            width = max(40, self.app.size.width - 6)
            self.query_one("#ds-report", Static).update(report_text(report, width))

    def on_resize(self) -> None:
        self._set_report(self.report)

    def _show_report(self, report: Text, records: Text) -> None:
        self.report = None
        self.query_one("#ds-report", Static).update(report)
        self.query_one("#ds-records", Static).update(records)

    def _status(self, text: str) -> None:
        self.status_text = text
        self.query_one("#ds-status", Static).update(text)

    # --- domain terms: `data show --terms`, a bundled list or a file --------------------------

    @on(Select.Changed, "#ds-terms")
    def _terms_chosen(self, event: Select.Changed) -> None:
        file = self.query_one("#ds-terms-file", Input)
        file.display = event.value == TERMS_FILE
        if event.value != TERMS_FILE:
            self._use_terms(event.value or None)
        elif file.value.strip():
            self._use_terms(file.value.strip())
        else:
            file.focus()  # the analysis changes once a file is given

    @on(Input.Submitted, "#ds-terms-file")
    def _terms_file_given(self) -> None:
        path = self.query_one("#ds-terms-file", Input).value.strip()
        if path:
            self._use_terms(path)
        else:
            self._status("type the path of a terms file (one term a line)")

    def _use_terms(self, spec: str | None) -> None:
        """Analyse with this term list from now on; the selected dataset at once."""
        if spec is None and self.terms_spec is None:
            return  # the Select's first value, or none chosen again
        try:
            terms = analysis.load_terms(spec) if spec else None
        except DataError as exc:  # names the file: not found, not UTF-8, no terms
            self._status(str(exc))
            return
        self.terms_spec, self.terms = spec, terms
        self._status(f"domain terms: {terms[0]}, {len(terms[1])} terms" if terms else "")
        name = self.selected
        if not name or name in self.broken:
            return
        if self.counted_with:  # keep the token counts: the child counts them again
            self._count_tokens(name, self.counted_with)
        else:
            self._load(name, terms)

    # --- token counts: a child process, since a tokenizer needs transformers ------------------

    @on(Button.Pressed, "#ds-count")
    @on(Input.Submitted, "#ds-model")
    def _count_pressed(self) -> None:
        model = self.query_one("#ds-model", Input).value.strip()
        if not model or not self.selected or self.selected.startswith(BROKEN):
            self._status("pick a dataset and type a model to count tokens with")
            return
        self._count_tokens(self.selected, model)

    @work(exclusive=True, group="tokens", exit_on_error=False)
    async def _count_tokens(self, name: str, model: str) -> None:
        counting = f"counting tokens of {name} with {model}…"
        self._status(counting)
        terms_spec = self.terms_spec
        command = [sys.executable, "-m", "mlxlora", "data", "show", name, "--model", model]
        if terms_spec:
            command += ["--terms", terms_spec]
        proc = await asyncio.create_subprocess_exec(
            *command, "--json", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        try:
            out, err = await proc.communicate()
        except asyncio.CancelledError:
            proc.kill()
            raise
        if (name, terms_spec) != (self.selected, self.terms_spec):
            # a dataset or term list chosen meanwhile (analysed without token counts): its
            # report stays, and what the status said of it
            if self.status_text == counting:
                self._status("")
            return
        if proc.returncode != 0:
            lines = err.decode("utf-8", "replace").strip().splitlines() or ["failed"]
            self._status(lines[-1].removeprefix("mlxlora: error: "))
            return
        self.counted_with = model
        self._status(f"tokens counted with {model}")
        self._set_report(json.loads(out))

    # --- import and delete ----------------------------------------------------------------

    def action_import_dataset(self) -> None:
        self.app.push_screen(ImportDialog(), self._imported)

    def _imported(self, result: tuple[str, list[str]] | None) -> None:
        if result:
            name, warnings = result
            self.action_refresh(select=name)
            self._status("; ".join([f"imported {name}", *warnings]))

    def action_delete_dataset(self) -> None:
        name = self.selected
        if not name or name.startswith(BROKEN):
            return
        question = f"Delete dataset {name}? Its stored records are removed from the workspace."
        if users := store.runs_using(name):
            if len(users) == 1:
                question += f" Run {users[0]} uses it: it could not resume or be evaluated."
            else:
                question += (
                    f" Runs {', '.join(users)} use it: they could not resume or be evaluated."
                )
        self.app.push_screen(Confirm(question), lambda yes: self._delete(name, yes))

    def _delete(self, name: str, yes: bool | None) -> None:
        if not yes:
            return
        try:
            store.remove_dataset(name, force=True)  # asked, naming the runs that use it
        except MlxloraError as exc:
            self._status(str(exc))
            return
        table = self.query_one("#ds-table", DataTable)
        keys = [row.value for row in table.rows]
        # the row that takes its place (the one before, for the last), not the first
        rest = [key for key in keys if key != name]
        self.selected = None
        self.action_refresh(select=rest[min(keys.index(name), len(rest) - 1)] if rest else None)
        self._status(f"deleted {name}")
