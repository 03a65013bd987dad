"""The Datasets tab: the table, importing from the form, analysis, preview, delete, and
directories that are not datasets. Real store, real files, real `data show` child process."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from threading import Event

import pytest
from run_fixtures import wait_for
from textual.widgets import DataTable, Input, Static, TabbedContent

from mlxlora.data import store
from mlxlora.errors import DataError
from mlxlora.tui.app import MlxloraApp
from mlxlora.tui.screens.datasets import DatasetsTab
from mlxlora.tui.screens.datasets.import_dialog import ImportDialog
from mlxlora.tui.widgets.confirm import Confirm

CREATED = "2025-04-01T09:30:00+00:00"
MEDICAL = Path(__file__).resolve().parents[2] / "tutorial/datasets/level3_advanced_medical.json"
JA_RECORDS = [
    {"instruction": "糖尿病とは何ですか？", "output": "血糖値が高い状態が続く病気です。"},
    {"instruction": "発熱の目安は？", "output": "一般に37.5℃以上を発熱とします。"},
    {"instruction": "発熱の目安は？", "output": "一般に37.5℃以上を発熱とします。"},
]


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


@pytest.fixture
def datasets(home, tmp_path, quickstart_data, monkeypatch):
    """Two stored datasets with a fixed creation time (the table shows it)."""
    monkeypatch.setattr(store, "_now", lambda: CREATED)
    store.import_dataset(quickstart_data, "quickstart", "quick start Q&A")
    store.import_dataset(write_jsonl(tmp_path / "ja.jsonl", JA_RECORDS), "medical-ja", "医療の質問")
    return home


def text(app, selector: str) -> str:
    return str(app.screen.query_one(selector, Static).content)


def table_rows(app) -> list[list[str]]:
    table = app.query_one("#ds-table", DataTable)
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


async def settle(app, pilot):
    """Wait for this tab's workers (other tabs run watchers that never end)."""
    await pilot.pause()
    await app.workers.wait_for_complete(
        w for w in app.workers if isinstance(w.node, (DatasetsTab, ImportDialog))
    )
    await pilot.pause()


async def import_from_form(app, pilot, path, name: str) -> None:
    await pilot.press("i")
    dialog = app.screen
    assert isinstance(dialog, ImportDialog)
    dialog.query_one("#import-path", Input).value = str(path)
    dialog.query_one("#import-name", Input).focus()
    await pilot.press(*name)
    await pilot.click("#import-ok")
    await settle(app, pilot)


async def pick_term_list(pilot, *moves: str) -> None:
    """Open the term list's menu, move from the list chosen now, pick."""
    pilot.app.query_one("#ds-terms").focus()
    await pilot.press("enter", *moves, "enter")


async def count_tokens(app, pilot, model: str) -> None:
    app.query_one("#ds-model", Input).value = model
    await pilot.click("#ds-count")


def hold_the_count_child(monkeypatch) -> asyncio.Event:
    """Child processes (the count's `data show`) start only once the event returned is set."""
    from mlxlora.tui.screens.datasets import tab as tab_module

    start, told = asyncio.create_subprocess_exec, asyncio.Event()

    async def start_when_told(*command, **kwargs):
        await told.wait()
        return await start(*command, **kwargs)

    monkeypatch.setattr(tab_module.asyncio, "create_subprocess_exec", start_when_told)
    return told


def hold_term_analyses(monkeypatch, until: Event) -> None:
    """An analysis with a term list (a thread worker) ends only once `until` is set."""
    from mlxlora.tui.screens.datasets import tab as tab_module

    read = tab_module.load_report

    def read_when_told(name, terms):
        if terms:
            until.wait(60)
        return read(name, terms)

    monkeypatch.setattr(tab_module, "load_report", read_when_told)


def record_analyses(monkeypatch, after_each=lambda handed: None) -> list:
    """The analyses handed to the tab, in order (`after_each` sees the list after each)."""
    handed, loaded = [], DatasetsTab._loaded

    def hand(self, *args):
        handed.append(args)
        after_each(handed)
        loaded(self, *args)

    monkeypatch.setattr(DatasetsTab, "_loaded", hand)
    return handed


def test_import_a_good_and_a_bad_file_from_the_form(home, tmp_path, quickstart_data):
    bad = write_jsonl(
        tmp_path / "bad.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "c"}]
    )

    async def go():
        app = MlxloraApp()
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            assert "no datasets yet" in text(app, "#ds-status")

            await import_from_form(app, pilot, quickstart_data, "クイック")
            assert not isinstance(app.screen, ImportDialog)
            assert [r[:3] for r in table_rows(app)] == [["クイック", "instruction", "120"]]
            assert "クイック  instruction, 120 records" in text(app, "#ds-report")
            assert text(app, "#ds-status") == "imported クイック"

            await import_from_form(app, pilot, bad, "bad")
            assert isinstance(app.screen, ImportDialog)  # stays open, showing why
            error = text(app, "#import-error")
            with pytest.raises(DataError) as engine:  # what `mlxlora data import` says
                store.import_dataset(bad, "bad")
            assert error == str(engine.value) and "\n" not in error
            assert error.startswith(f'{bad}: line 2: field "output"')
            app.screen.query_one("#import-path", Input).value = str(quickstart_data)
            await pilot.pause()
            assert text(app, "#import-error") == ""  # about the file typed before
            await pilot.press("escape")
            assert [r[0] for r in table_rows(app)] == ["クイック"]

            # the warning that the records are stored already ends with the dataset's name,
            # which a one-line status cut off
            await import_from_form(app, pilot, quickstart_data, "二つ目")
            status = text(app, "#ds-status")
            assert status.endswith("the same records are stored already as dataset 'クイック'")
            assert app.query_one("#ds-status").size.height == 2  # wrapped, whole

    asyncio.run(go())
    assert not store.exists("bad")
    assert sorted(p.name for p in (home / "datasets").iterdir()) == ["クイック", "二つ目"]


def test_analysis_and_preview_of_the_selected_dataset(datasets):
    async def go():
        app = MlxloraApp()
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            rows = table_rows(app)
            assert [r[0] for r in rows] == ["medical-ja", "quickstart"]
            assert rows[0][1:] == ["instruction", "3", "2025-04-01 09:30", "医療の質問"]
            report = text(app, "#ds-report")
            assert "medical-ja  instruction, 3 records" in report
            assert "histogram (chars per record)" in report
            # Record numbers count from 1, as in the preview below.
            assert "exact duplicates: 1 (record 3 repeats 2)" in report
            assert "near duplicates: 0" in report and "boilerplate sentences: 0" in report

            app.query_one("#ds-detail", TabbedContent).active = "ds-preview"
            await pilot.pause()
            preview = text(app, "#ds-records")
            assert preview.startswith("record 1\nuser: 糖尿病とは何ですか？\nassistant: 血糖値")
            assert "record 3" in preview and "record 4" not in preview

            app.query_one("#ds-table").focus()
            await pilot.press("down")
            await settle(app, pilot)
            assert "quickstart  instruction, 120 records" in text(app, "#ds-report")
            assert text(app, "#ds-records").count("\nassistant: ") == 100  # first 100 only

    asyncio.run(go())


def test_token_counts_come_from_a_data_show_child(datasets):
    async def go():
        app = MlxloraApp()
        async with app.run_test(size=(100, 40)) as pilot:
            await settle(app, pilot)
            before = text(app, "#ds-report")
            assert "│ tokens │" not in before and "histogram (chars per record)" in before
            await count_tokens(app, pilot, "builtin:tiny")
            await settle(app, pilot)
            report = text(app, "#ds-report")
            assert "histogram (tokens per record)" in report, report
            assert "│ tokens │" in report
            assert text(app, "#ds-status") == "tokens counted with builtin:tiny"

            app.query_one("#ds-model", Input).value = "builtin:nope"
            await pilot.click("#ds-count")
            await settle(app, pilot)
            assert "unknown builtin model" in text(app, "#ds-status")

    asyncio.run(go())


def test_the_term_list_chosen_last_has_the_last_word(home, monkeypatch):
    """A thread worker a newer choice cancelled runs on: the analysis with the list chosen
    before came after the one with the list chosen last, and the report showed the density
    of a list no longer chosen (the Train tab's model marks raced so, in CI)."""
    store.import_dataset(MEDICAL, "医療専門知識データセット", kind="instruction")
    none_handed = Event()
    hold_term_analyses(monkeypatch, none_handed)  # the medical list's ends after none's

    def after_each(handed: list) -> None:
        read = handed[-1][0]
        if len(handed) > 1 and read[1] is None:  # none's, chosen after medical (not the first)
            none_handed.set()

    handed = record_analyses(monkeypatch, after_each)

    async def go():
        app = MlxloraApp()
        async with app.run_test(size=(100, 40)) as pilot:
            await settle(app, pilot)
            await pick_term_list(pilot, "down")  # medical
            await pilot.press("enter", "up", "enter")  # none, before medical's analysis ended
            # the analyses at the start, with none, and with medical (its thread runs on)
            await wait_for(pilot, lambda: len(handed) == 3)
            await pilot.pause()
            assert text(app, "#ds-status") == ""
            assert "domain terms (" not in text(app, "#ds-report")

    asyncio.run(go())


def test_an_analysis_still_running_leaves_the_token_counts(datasets, monkeypatch):
    """A term list chosen, then "Count tokens" before its analysis ended: the analysis (a
    thread worker), without token counts, came after the child's report and replaced it."""
    counted = Event()
    hold_term_analyses(monkeypatch, counted)  # the medical list's ends after the token counts
    handed = record_analyses(monkeypatch)

    async def go():
        app = MlxloraApp()
        async with app.run_test(size=(100, 40)) as pilot:
            await settle(app, pilot)
            await pick_term_list(pilot, "down")  # medical
            await count_tokens(app, pilot, "builtin:tiny")
            counting = "tokens counted with builtin:tiny"
            await wait_for(pilot, lambda: text(app, "#ds-status") == counting, timeout=60)
            counted.set()
            await wait_for(pilot, lambda: len(handed) == 2)  # at the start, with medical
            await pilot.pause()
            report = text(app, "#ds-report")
            assert "│ tokens │" in report and "domain terms (" in report, report
            assert text(app, "#ds-records").startswith("record 1\n")

    asyncio.run(go())


def test_token_counts_for_a_term_list_no_longer_chosen_are_not_shown(datasets, monkeypatch):
    """ "Count tokens", then a term list chosen before the counts came: the child's report,
    without the list, came after the analysis with it and replaced it."""
    chosen, analysed = hold_the_count_child(monkeypatch), record_analyses(monkeypatch)

    async def go():
        app = MlxloraApp()
        async with app.run_test(size=(100, 40)) as pilot:
            await settle(app, pilot)
            await count_tokens(app, pilot, "builtin:tiny")
            await pick_term_list(pilot, "down")  # medical, while counting
            await wait_for(pilot, lambda: len(analysed) == 2)  # at the start, with medical
            chosen.set()
            await settle(app, pilot)  # the count too
            assert "domain terms (" in text(app, "#ds-report")
            # the status said "tokens counted with builtin:tiny" beside a report without them
            assert text(app, "#ds-status").startswith("domain terms: medical"), text(
                app, "#ds-status"
            )

    asyncio.run(go())


def test_token_counts_of_a_dataset_no_longer_selected_leave_no_status(datasets, monkeypatch):
    """ "Count tokens", then another dataset picked before the counts came: the status said
    "counting tokens of medical-ja…" for good (the dropped counts said nothing more)."""
    moved = hold_the_count_child(monkeypatch)

    async def go():
        app = MlxloraApp()
        async with app.run_test(size=(100, 40)) as pilot:
            await settle(app, pilot)
            await count_tokens(app, pilot, "builtin:tiny")
            await pilot.pause()
            assert text(app, "#ds-status").startswith("counting tokens of ")
            app.query_one("#ds-table").focus()
            await pilot.press("down")  # the other dataset
            moved.set()
            await settle(app, pilot)
            assert text(app, "#ds-status") == ""
            assert "│ tokens │" not in text(app, "#ds-report")

    asyncio.run(go())


def test_domain_term_density_with_a_bundled_list_or_a_file(home, tmp_path):
    """The tab showed no term density: the tutorial's 1.3 (38 and 30 medical terms per 1,000
    answer characters) came only from `data show --terms medical`."""
    store.import_dataset(MEDICAL, "医療専門知識データセット", kind="instruction")
    terms = tmp_path / "用語.txt"
    terms.write_text("# two terms\n治療\n診断\n", "utf-8")

    async def choose(pilot, *moves: str) -> None:
        """pick_term_list, and its analysis."""
        await pick_term_list(pilot, *moves)
        await settle(pilot.app, pilot)

    async def go():
        app = MlxloraApp()
        async with app.run_test(size=(100, 40)) as pilot:
            await settle(app, pilot)
            assert "domain terms (" not in text(app, "#ds-report")
            await choose(pilot, "down")  # medical (bundled)
            report = text(app, "#ds-report")
            assert "domain terms (medical, 108 terms): 38.47 hits per 1,000 answer" in report
            assert "without boilerplate: 29.95 per 1,000 characters" in report
            assert text(app, "#ds-status") == "domain terms: medical, 108 terms"

            await choose(pilot, "down")  # a file of terms…: the path field appears, focused
            assert app.focused is app.query_one("#ds-terms-file", Input)
            await pilot.press(*str(tmp_path / "nope.txt"), "enter")
            assert "nope.txt: terms file not found (bundled lists: medical)" in text(
                app, "#ds-status"
            )
            assert "(medical, 108 terms)" in text(app, "#ds-report")  # still the last list
            app.query_one("#ds-terms-file", Input).value = str(terms)
            await pilot.press("enter")
            await settle(app, pilot)
            assert "domain terms (用語.txt, 2 terms): 11.15 hits per 1,000" in text(
                app, "#ds-report"
            )

            app.query_one("#ds-model", Input).value = "builtin:tiny"
            await pilot.click("#ds-count")  # the child counts with the same terms
            await settle(app, pilot)
            assert "histogram (tokens per record)" in text(app, "#ds-report")
            assert "(用語.txt, 2 terms): 11.15" in text(app, "#ds-report")
            await choose(pilot, "up", "up")  # none: the token counts stay
            assert "domain terms (" not in text(app, "#ds-report")
            assert "histogram (tokens per record)" in text(app, "#ds-report")

    asyncio.run(go())


def test_delete_asks_first(datasets):
    async def go():
        app = MlxloraApp()
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            await pilot.press("d")
            assert isinstance(app.screen, Confirm)
            await pilot.press("n")
            assert store.exists("medical-ja")
            await pilot.press("d", "y")
            await settle(app, pilot)
            assert [r[0] for r in table_rows(app)] == ["quickstart"]
            assert "quickstart  instruction" in text(app, "#ds-report")

    asyncio.run(go())
    assert not store.exists("medical-ja") and store.exists("quickstart")


def test_one_dataset_and_the_one_run_using_it_are_said_as_one(home, quickstart_data):
    """`1 datasets (i import, d delete)`, and `Runs 実験1-… use it: they could not…` for one."""
    from mlxlora.cli import main

    store.import_dataset(quickstart_data, "医療QA")
    tiny = str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")
    sets = ["data.dataset=医療QA", "training.max_steps=1", "name=実験1"]
    assert main(["train", tiny, *(a for s in sets for a in ("--set", s))]) == 0

    async def go():
        app = MlxloraApp()
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            assert text(app, "#ds-status") == "1 dataset (i import, d delete)"
            await pilot.press("d")
            question = app.screen.question
            assert " Run 実験1-" in question and " uses it: it could not resume " in question

    asyncio.run(go())


def test_after_a_delete_the_dataset_in_its_place_is_selected(datasets, tmp_path):
    """Deleting the middle one of three selected the first, as if the list started over."""
    store.import_dataset(write_jsonl(tmp_path / "z.jsonl", JA_RECORDS[:1]), "医療QA")

    async def go():
        app = MlxloraApp()
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            names = [r[0] for r in table_rows(app)]
            app.query_one("#ds-table", DataTable).move_cursor(row=1)
            await settle(app, pilot)
            await pilot.press("d", "y")
            await settle(app, pilot)
            assert app.query_one(DatasetsTab).selected == names[2]
            assert [r[0] for r in table_rows(app)] == [names[0], names[2]]

    asyncio.run(go())


def test_broken_datasets_show_as_errors_not_crashes(datasets):
    root = datasets / "datasets"
    (root / "half").mkdir()  # an import interrupted before meta.json was written
    shutil.copytree(root / "quickstart", root / "edited")
    meta = json.loads((root / "edited" / "meta.json").read_text("utf-8"))
    (root / "edited" / "meta.json").write_text(json.dumps({**meta, "name": "edited"}), "utf-8")
    with open(root / "edited" / "records.jsonl", "a", encoding="utf-8") as f:
        f.write('{"text": "added by hand"}\n')

    async def go():
        app = MlxloraApp()
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            rows = table_rows(app)
            assert [r[0] for r in rows] == ["edited", "medical-ja", "quickstart", "half"]
            assert rows[3][1] == "error" and "meta.json is missing or unreadable" in rows[3][4]
            assert "changed since it was imported" in text(app, "#ds-report")
            app.query_one("#ds-table").focus()
            await pilot.press("down", "down", "down")
            await settle(app, pilot)
            assert "meta.json is missing or unreadable" in text(app, "#ds-report")
            await pilot.press("d")  # nothing to delete through the store: no dialog
            assert not isinstance(app.screen, Confirm)

    asyncio.run(go())


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_snapshot(datasets, snap_compare, size):
    async def loaded(pilot):
        await settle(pilot.app, pilot)

    assert snap_compare(MlxloraApp(), terminal_size=size, run_before=loaded)


def test_the_file_picker_offers_only_data_files(home, tmp_path, monkeypatch):
    files = tmp_path / "files"
    (files / "sub").mkdir(parents=True)
    for name in ("a.jsonl", "b.json", "notes.txt", ".hidden.jsonl"):
        (files / name).write_text("{}\n", "utf-8")
    monkeypatch.chdir(files)

    async def go():
        app = MlxloraApp()
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            await pilot.press("i")
            await pilot.click("#import-browse")
            tree = app.screen.query_one("#picker-tree")
            for _ in range(100):  # the tree loads in a worker that never completes
                if tree.root.children:
                    break
                await pilot.pause(0.05)
            shown = [str(node.label) for node in tree.root.children]
            assert shown == ["sub", "a.jsonl", "b.json"]
            tree.select_node(tree.root.children[1])  # as enter on it
            await pilot.pause()
            assert app.screen.query_one("#import-path", Input).value == str(files / "a.jsonl")

    asyncio.run(go())


def test_enter_after_picking_a_file_imports_it(home, tmp_path, quickstart_data, monkeypatch):
    """Keyboard only: i, Browse…, pick the file, Enter. Focus stayed on Browse… after the
    pick, so that Enter opened the picker again instead of importing (a QA finding)."""
    folder = tmp_path / "files"
    folder.mkdir()
    shutil.copy(quickstart_data, folder / "quickstart.jsonl")
    monkeypatch.chdir(folder)

    async def go():
        app = MlxloraApp()
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            await pilot.press("i", "tab", "enter")  # Tab from the file field to Browse…
            tree = app.screen.query_one("#picker-tree")
            for _ in range(100):  # the tree loads in a worker that never completes
                if tree.root.children:
                    break
                await pilot.pause(0.05)
            tree.select_node(tree.root.children[0])  # as enter on it
            await pilot.pause()
            await pilot.press("enter")
            await settle(app, pilot)
            assert not isinstance(app.screen, ImportDialog)
            assert [r[:3] for r in table_rows(app)] == [["quickstart", "instruction", "120"]]

    asyncio.run(go())


def test_the_file_picker_opens_where_the_typed_path_points_and_climbs_up(home, tmp_path):
    """Browse… opened at the working directory only: a file elsewhere could not be reached."""
    files = tmp_path / "データ"
    (files / "sub").mkdir(parents=True)
    (files / "a.jsonl").write_text("{}\n", "utf-8")

    async def shown(pilot, tree) -> list[str]:
        for _ in range(100):  # the tree loads in a worker
            if tree.root.children:
                break
            await pilot.pause(0.05)
        return [str(node.label) for node in tree.root.children]

    async def go():
        app = MlxloraApp()
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            await pilot.press("i")
            app.screen.query_one("#import-path", Input).value = str(files / "sub" / "x.jsonl")
            await pilot.click("#import-browse")
            tree = app.screen.query_one("#picker-tree")
            assert Path(tree.path) == files / "sub"
            await pilot.press("backspace")
            await pilot.pause()
            assert Path(tree.path) == files and await shown(pilot, tree) == ["sub", "a.jsonl"]
            tree.select_node(tree.root.children[1])  # as enter on it
            await pilot.pause()
            assert app.screen.query_one("#import-path", Input).value == str(files / "a.jsonl")

    asyncio.run(go())


def test_a_dataset_imported_from_the_shell_shows_when_the_tab_comes_back(datasets, tmp_path):
    """Tutorial level 2, step 1 done from the shell while the studio is open: the table
    lists the new dataset once the tab is shown again, without a refresh key."""
    from mlxlora.cli import main

    chat = Path(__file__).resolve().parents[2] / "tutorial/datasets/level2_intermediate.json"

    async def go():
        app = MlxloraApp()
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            await pilot.press("4")
            await pilot.pause()
            args = ["data", "import", str(chat), "--name", "実用知識チャット", "--type", "chat"]
            assert main(args) == 0
            await pilot.press("1")
            await settle(app, pilot)
            names = [row[0] for row in table_rows(app)]
            assert names == ["medical-ja", "quickstart", "実用知識チャット"]

    asyncio.run(go())


def test_importing_under_a_taken_name_says_what_to_do_in_the_studio(datasets, tmp_path):
    """The store's message (`choose another --name or ... mlxlora data rm`) is the CLI's;
    the form has a name field and the table a delete key."""

    async def go():
        app = MlxloraApp()
        async with app.run_test(size=(80, 24)) as pilot:
            await settle(app, pilot)
            path = write_jsonl(tmp_path / "again.jsonl", JA_RECORDS)
            await import_from_form(app, pilot, path, "medical-ja")
            assert isinstance(app.screen, ImportDialog)  # stays open, showing why
            error = text(app, "#import-error")
            assert error == (
                "dataset medical-ja exists already: change the name, or cancel and delete it (d)"
            )

    asyncio.run(go())
