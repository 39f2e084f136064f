"""Loaders on the real shared files and MovieLens-100k, small generated files, and bad input."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from think_rec.data.errors import DataError
from think_rec.data.loaders import LOADERS, load_source, movielens_100k_path
from think_rec.data.prepare import prepare
from think_rec.data.schema import RecDataset


def counts(ds: RecDataset) -> tuple[int, int, int, int]:
    s = ds.stats()
    return s["users"], s["items"], s["items_interacted"], s["interactions"]


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


# --- real data ---------------------------------------------------------------------------------

def test_amazon18_rebuilds_sequences_from_windows(shared_data):
    ds = load_source("amazon18", shared_data / "amazon18-industrial")
    assert counts(ds) == (3285, 3686, 3541, 22743)
    assert ds.stats()["min_seq_len"] >= 5
    item = ds.catalog["0"]
    assert item["title"].startswith("SUPCO SPP6")
    assert item["description"].startswith("Relay/CAPACITOR") and not item["description"].startswith("[")


def test_amazon14_sequences_without_metadata(shared_data):
    ds = load_source("amazon14", shared_data / "amazon14-beauty")
    assert counts(ds) == (22363, 12101, 12101, 194687)
    assert ds.interactions.table[0]["item_ids"] == [str(i) for i in range(1, 9)]
    assert ds.catalog["1"]["title"] == ""


def test_lcrec_scientific(shared_data):
    ds = load_source("lcrec", shared_data / "amazon18-scientific")
    assert counts(ds) == (8317, 4344, 4344, 58492)
    assert ds.catalog["0"]["categories"][:2] == ["Industrial & Scientific", "Industrial Electrical"]


def test_recbole_movielens_100k():
    assert (movielens_100k_path() / "ml-100k.inter").is_file()
    ds = load_source("recbole", "ml-100k")
    assert counts(ds) == (943, 1682, 1682, 100000)
    toy = ds.catalog["1"]
    assert (toy["title"], toy["description"]) == ("Toy Story", "Released 1995")
    assert toy["categories"] == ["Animation", "Children's", "Comedy"]
    for row in ds.interactions.table.select(range(20)):
        assert row["timestamps"] == sorted(row["timestamps"])
        assert len(row["timestamps"]) == len(row["item_ids"])


# --- small generated files -----------------------------------------------------------------------

def amazon23_files(tmp_path: Path) -> Path:
    meta = [{"parent_asin": a, "title": f"Item {a}", "description": ["Line one.", "Line two."],
             "features": [], "store": "Acme", "categories": ["Beauty", "Skin"], "price": p,
             "images": [{"thumb": "t.jpg", "large": f"https://img/{a}.jpg"}]}
            for a, p in [("A1", 9.5), ("A2", None), ("A3", "12.00"), ("A4", 1.0)]]
    reviews = [{"user_id": "U1", "parent_asin": "A2", "timestamp": 300, "rating": 5.0},
               {"user_id": "U2", "parent_asin": "A1", "timestamp": 100, "rating": 4.0},
               {"user_id": "U1", "parent_asin": "A1", "timestamp": 100, "rating": 3.0},
               {"user_id": "U1", "parent_asin": "A3", "timestamp": 200, "rating": 5.0},
               {"user_id": "U2", "parent_asin": "A3", "timestamp": 50, "rating": 2.0}]
    write_jsonl(tmp_path / "meta_Beauty.jsonl", meta)
    write_jsonl(tmp_path / "Beauty.jsonl", reviews)
    return tmp_path


def test_amazon23_sorts_by_time_and_reads_meta(tmp_path):
    ds = load_source("amazon23", amazon23_files(tmp_path))
    rows = {r["user_id"]: r for r in ds.interactions.table}
    assert rows["U1"]["item_ids"] == ["A1", "A3", "A2"] and rows["U1"]["timestamps"] == [100, 200, 300]
    assert rows["U2"]["item_ids"] == ["A3", "A1"]
    assert sorted(ds.catalog.ids) == ["A1", "A2", "A3"]  # only used items of a category-wide meta file
    a1, a2, a3 = ds.catalog["A1"], ds.catalog["A2"], ds.catalog["A3"]
    assert a1["description"] == "Line one. Line two." and a1["brand"] == "Acme"
    assert a1["image"] == "https://img/A1.jpg" and a1["categories"] == ["Beauty", "Skin"]
    assert (a1["price"], a2["price"], a3["price"]) == (9.5, None, 12.0)
    high = load_source("amazon23", tmp_path / "Beauty.jsonl", min_rating=4.0)
    assert {r["user_id"]: r["item_ids"] for r in high.interactions.table} == {"U1": ["A3", "A2"], "U2": ["A1"]}


def test_amazon14_with_python_literal_metadata(tmp_path):
    (tmp_path / "sequential_data.txt").write_text("1 1 2 3\n2 2 3\n")
    (tmp_path / "datamaps.json").write_text(json.dumps({"id2item": {"1": "B01", "2": "B02", "3": "B03"}}))
    write_jsonl(tmp_path / "meta_Beauty.json", [
        "{'asin': 'B01', 'title': 'Soap', 'categories': [['Beauty', 'Bath']], 'price': 3.5, 'imUrl': 'http://x/1.jpg'}",
        {"asin": "B02", "title": "Gel", "brand": "Z"},
        {"asin": "B03", "title": "Oil"},
        {"asin": "B99", "title": "never bought"},
    ])
    ds = load_source("amazon14", tmp_path)
    assert ds.catalog.ids == ["1", "2", "3"]
    soap = ds.catalog["1"]
    assert (soap["title"], soap["categories"], soap["price"], soap["image"]) == (
        "Soap", ["Beauty", "Bath"], 3.5, "http://x/1.jpg")
    assert ds.catalog["2"]["brand"] == "Z"


def test_recbole_atomic_files_sorted_by_time(tmp_path):
    (tmp_path / "toy.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                        "u\tb\t20\nu\ta\t10\nv\ta\t5\n")
    (tmp_path / "toy.item").write_text("item_id:token\ttitle:token_seq\tgenre:token_seq\n"
                                       "a\tAlpha\tx y\nb\tBeta\tz\nc\tGamma\tz\n")
    ds = load_source("recbole", tmp_path)
    assert {r["user_id"]: r["item_ids"] for r in ds.interactions.table} == {"u": ["a", "b"], "v": ["a"]}
    assert len(ds.catalog) == 3 and ds.catalog["a"]["categories"] == ["x", "y"]


def png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), "red").save(path)
    return path


def test_jsonl_format(tmp_path):
    png(tmp_path / "images" / "42.png")
    write_jsonl(tmp_path / "items.jsonl", [
        {"item_id": "42", "title": "Red kettle", "categories": "Kitchen > Kettles", "price": 24.5,
         "image": "images/42.png"},
        {"item_id": "7", "title": "Mug", "image": "https://x/7.png"},
        {"item_id": "8"},
    ])
    write_jsonl(tmp_path / "interactions.jsonl", [
        {"user_id": "u1", "item_ids": ["42", "7"], "timestamps": [1, 2]},
        {"user_id": "u2", "item_ids": ["7"]},
    ])
    ds = load_source("jsonl", tmp_path)
    assert counts(ds) == (2, 3, 2, 3)
    kettle = ds.catalog["42"]
    assert kettle["categories"] == ["Kitchen", "Kettles"] and kettle["image"] == str(tmp_path / "images/42.png")
    assert ds.catalog["7"]["image"] == "https://x/7.png"
    assert ds.interactions.table[1]["timestamps"] == []


def test_prepare_writes_stats_and_kcore(tmp_path):
    write_jsonl(tmp_path / "items.jsonl", [{"item_id": i} for i in "abcd"])
    write_jsonl(tmp_path / "interactions.jsonl", [
        {"user_id": "u1", "item_ids": ["a", "b", "c"]}, {"user_id": "u2", "item_ids": ["a", "b"]},
        {"user_id": "u3", "item_ids": ["a", "d"]}])
    stats = prepare("jsonl", str(tmp_path), tmp_path / "out", kcore=2)
    saved = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert saved == stats
    assert (stats["users"], stats["items"], stats["interactions"], stats["kcore"]) == (2, 4, 4, 2)
    again = RecDataset.load(tmp_path / "out")
    assert again.stats() == stats and again.extra_stats["kcore"] == 2


def test_prepare_synthetic_writes_images(tmp_path):
    stats = prepare("synthetic", None, tmp_path / "syn", n_items=80, n_users=30, seed=3, n_categories=4)
    assert (stats["users"], stats["items"], stats["items_with_image"]) == (30, 80, 80)
    assert len(list((tmp_path / "syn" / "images").glob("*.png"))) == 80
    with pytest.raises(ValueError, match="needs a path"):
        prepare("jsonl", None, tmp_path / "x")
    with pytest.raises(ValueError, match="unknown source"):
        prepare("nope", "x", tmp_path / "x")


# --- bad input -------------------------------------------------------------------------------------

def jsonl_case(tmp_path: Path, items: list, inter: list) -> Path:
    write_jsonl(tmp_path / "items.jsonl", items)
    write_jsonl(tmp_path / "interactions.jsonl", inter)
    return tmp_path


GOOD_ITEMS = [{"item_id": "a"}, {"item_id": "b"}]
GOOD_USER = {"user_id": "ok", "item_ids": ["a", "b"]}
BAD_CASES = {
    "malformed": (GOOD_ITEMS, [GOOD_USER, '{"user_id": "u", "item_ids": ["a"'], "interactions.jsonl", 2,
                  "malformed JSON"),
    "unknown": (GOOD_ITEMS, [GOOD_USER, {"user_id": "u", "item_ids": ["a", "zz"]}], "interactions.jsonl", 2,
                "unknown item id 'zz'"),
    "duplicate": (GOOD_ITEMS + [{"item_id": "a"}], [GOOD_USER], "items.jsonl", 3, "duplicate item id 'a'"),
    "empty": (GOOD_ITEMS, [GOOD_USER, {"user_id": "u", "item_ids": []}], "interactions.jsonl", 2,
              "empty sequence"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_rows_name_file_and_line_and_can_be_skipped(tmp_path, case):
    items, inter, file_name, line, message = BAD_CASES[case]
    folder = jsonl_case(tmp_path, items, inter)
    with pytest.raises(DataError, match=message) as err:
        load_source("jsonl", folder)
    assert err.value.path == str(folder / file_name) and err.value.line == line
    assert f"{file_name}:{line}:" in str(err.value)
    ds = load_source("jsonl", folder, skip_bad_rows=True)
    assert ds.stats()["dropped_rows"] == 1 and ds.interactions.users[0] == "ok"
    assert message in ds.extra_stats["dropped_examples"][0]


def test_missing_files(tmp_path):
    write_jsonl(tmp_path / "items.jsonl", GOOD_ITEMS)
    with pytest.raises(DataError, match="interactions.jsonl: file not found"):
        load_source("jsonl", tmp_path)
    for source in LOADERS:
        with pytest.raises(DataError, match="not found"):
            load_source(source, tmp_path / "nowhere")


def test_lcrec_bad_json_and_unknown_item_lines(tmp_path):
    items = '{\n  "0": {"title": "a"},\n  "1": {"title": "b"}\n}\n'
    (tmp_path / "X.item.json").write_text(items)
    (tmp_path / "X.inter.json").write_text('{\n "u0": ["0", "1"],\n "u1": ["0", "7"],\n "u2": []\n}\n')
    with pytest.raises(DataError, match=r"X.inter.json:3: u?.*unknown item id '7'"):
        load_source("lcrec", tmp_path)
    ds = load_source("lcrec", tmp_path, skip_bad_rows=True)
    assert ds.interactions.users == ["u0"] and ds.extra_stats["dropped_rows"] == 2
    (tmp_path / "X.item.json").write_text(items.replace('"1": {"title": "b"}', '"1": {"title": "b",}'))
    with pytest.raises(DataError, match=r"X.item.json:3: malformed JSON"):
        load_source("lcrec", tmp_path)
    (tmp_path / "X.item.json").write_text(items.replace('"1"', '"0"'))
    with pytest.raises(DataError, match=r"X.item.json:3: item_id: duplicate item id '0'"):
        load_source("lcrec", tmp_path)


def test_amazon18_contradicting_window(tmp_path, shared_data):
    src = shared_data / "amazon18-industrial"
    item_file = next(src.glob("index.*.item.json"))
    (tmp_path / item_file.name).write_text(item_file.read_text())
    header = "user_id,history_item_title,item_title,history_item_id,item_id,history_item_sid,item_sid\n"
    (tmp_path / "valid.Industrial_and_Scientific_x.csv").write_text(
        header + 'U1,[],t,"[1, 2]",3,[],s\nU2,[],t,[5],6,[],s\n')
    (tmp_path / "test.Industrial_and_Scientific_x.csv").write_text(
        header + 'U1,[],t,"[2, 3]",4,[],s\nU2,[],t,"[5, 9]",7,[],s\n')
    with pytest.raises(DataError, match=r"test.Industrial_and_Scientific_x.csv:3: history_item_id: window contradicts"):
        load_source("amazon18", tmp_path)
    ds = load_source("amazon18", tmp_path, skip_bad_rows=True)
    assert {r["user_id"]: r["item_ids"] for r in ds.interactions.table} == {
        "U1": ["1", "2", "3", "4"], "U2": ["5", "6"]}
    assert ds.stats()["dropped_rows"] == 1


# --- bad values: every one names file:line: field ----------------------------------------------------

def jsonl_files(items: list, inter: list) -> dict[str, bytes]:
    def lines(rows: list) -> bytes:
        return b"".join((r if isinstance(r, bytes) else (r if isinstance(r, str) else json.dumps(r)).encode())
                        + b"\n" for r in rows)
    return {"items.jsonl": lines(GOOD_ITEMS + items), "interactions.jsonl": lines([GOOD_USER] + inter)}


DEEP = "[" * 100_000 + "]" * 100_000
ITEMS_18 = json.dumps({str(i): {"title": f"t{i}"} for i in range(1, 7)}).encode()
HEADER_18 = b"user_id,history_item_title,item_title,history_item_id,item_id,history_item_sid,item_sid\n"
META_14 = b"{'asin': 'a', 'title': 'A'}\n{'asin': 'b', 'title': 'B'}\n"
META_23 = b'{"parent_asin": "A1"}\n{"parent_asin": "A2"}\n'
REVIEWS_23 = (b'{"user_id": "U1", "parent_asin": "A1", "timestamp": 1}\n'
              b'{"user_id": "U1", "parent_asin": "A2", "timestamp": 2}\n')
NOT_UTF8 = jsonl_files([b'{"item_id": "caf\xe9"}'], [])
# source, files, bad file, line, field, message
BAD_VALUES = {
    "categories-int": ("jsonl", jsonl_files([{"item_id": "c", "categories": 5}], []), "items.jsonl", 3,
                       "categories", "expected a list of strings, got int"),
    "image-int": ("jsonl", jsonl_files([{"item_id": "c", "image": 5}], []), "items.jsonl", 3, "image",
                  "expected a path or URL, got int"),
    "image-file-url": ("jsonl", jsonl_files([{"item_id": "c", "image": "file:///etc/passwd"}], []), "items.jsonl", 3,
                       "image", "only http(s) URLs"),
    "id-object": ("jsonl", jsonl_files([{"item_id": {"x": 1}}], []), "items.jsonl", 3, "item_id",
                  "expected a string or integer id, got dict"),
    "user-id-list": ("jsonl", jsonl_files([], [{"user_id": ["u"], "item_ids": ["a"]}]), "interactions.jsonl", 2,
                     "user_id", "expected a string or integer id, got list"),
    "title-object": ("jsonl", jsonl_files([{"item_id": "c", "title": {"en": "x"}}], []), "items.jsonl", 3, "title",
                     "expected text, got dict"),
    "price-nan": ("jsonl", jsonl_files(['{"item_id": "c", "price": NaN}'], []), "items.jsonl", 3, "price",
                  "expected a finite number"),
    "price-infinity": ("jsonl", jsonl_files(['{"item_id": "c", "price": Infinity}'], []), "items.jsonl", 3, "price",
                       "expected a finite number"),
    "timestamps-string": ("jsonl", jsonl_files([], [{"user_id": "u", "item_ids": ["a", "b"], "timestamps": "12"}]),
                          "interactions.jsonl", 2, "timestamps", "expected a list of integers, got str"),
    "timestamp-overflow": ("jsonl", jsonl_files([], [{"user_id": "u", "item_ids": ["a"], "timestamps": [2**63]}]),
                           "interactions.jsonl", 2, "timestamps", "out of the int64 range"),
    "deep-nesting": ("jsonl", jsonl_files([f'{{"item_id": "c", "title": {DEEP}}}'], []), "items.jsonl", 3, None,
                     "nested too deeply"),
    "not-utf8": ("jsonl", NOT_UTF8, "items.jsonl", 3, None,
                 f"invalid UTF-8 at byte {NOT_UTF8['items.jsonl'].index(0xE9)}"),
    "amazon14-categories-dict": ("amazon14", {"sequential_data.txt": b"1 a b\n", "meta_X.json": META_14 + (
        b"{'asin': 'c', 'categories': {'Beauty': ['Skin']}}\n")}, "meta_X.json", 3, "categories",
        "expected a list of category paths, got an object"),
    "amazon14-imurl-outside": ("amazon14", {"sequential_data.txt": b"1 a b\n", "meta_X.json": META_14 + (
        b"{'asin': 'c', 'imUrl': '/etc/passwd'}\n")}, "meta_X.json", 3, "image", "lies outside"),
    "amazon23-timestamp-overflow": ("amazon23", {"meta_Beauty.jsonl": META_23, "Beauty.jsonl": REVIEWS_23 + (
        b'{"user_id": "U2", "parent_asin": "A1", "timestamp": 99999999999999999999}\n')}, "Beauty.jsonl", 3,
        "timestamp", "out of the int64 range"),
    "amazon18-not-utf8": ("amazon18", {"index.X.item.json": ITEMS_18,
                                       "valid.X.csv": HEADER_18 + b'U1,[],t,"[1, 2]",3,[],s\n',
                                       "test.X.csv": HEADER_18 + b'U1,[],t,"[2, 3]",4,[],s\nU2,[],t\xff,[5],6,[],s\n'},
                          "test.X.csv", 3, None, f"invalid UTF-8 at byte {len(HEADER_18) + 25 + 6}"),
    "amazon18-history-string": ("amazon18", {"index.X.item.json": ITEMS_18, "valid.X.csv": HEADER_18 + (
                                             b'U1,[],t,"[1, 2]",3,[],s\nU2,[],t,\'56\',6,[],s\n'),
                                             "test.X.csv": HEADER_18 + b'U1,[],t,"[2, 3]",4,[],s\n'},
                                "valid.X.csv", 3, "history_item_id", "expected a list of item ids"),
}


@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_bad_values_name_file_line_and_field(tmp_path, case):
    source, files, bad_file, line, field, message = BAD_VALUES[case]
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    with pytest.raises(DataError) as err:
        load_source(source, tmp_path)
    e = err.value
    assert (Path(e.path).name, e.line, e.field) == (bad_file, line, field) and message in e.message
    assert str(e) == f"{e.path}:{line}: " + (f"{field}: " if field else "") + e.message
    ds = load_source(source, tmp_path, skip_bad_rows=True)
    assert ds.extra_stats["dropped_rows"] == 1 and ds.extra_stats["dropped_by_reason"] == {e.reason: 1}


def test_id_zero_is_an_id_and_long_csv_fields_load(tmp_path):
    jsonl = tmp_path / "jsonl"
    jsonl.mkdir()
    write_jsonl(jsonl / "items.jsonl", [{"item_id": 0, "price": "$1,250.00"}, {"item_id": "1", "price": "n/a"}])
    write_jsonl(jsonl / "interactions.jsonl", [{"user_id": 0, "item_ids": [0, "1"], "timestamps": [1, "2"]}])
    ds = load_source("jsonl", jsonl)
    assert ds.catalog.ids == ["0", "1"] and ds.interactions.users == ["0"]
    assert ds.interactions.table[0]["timestamps"] == [1, 2]
    assert (ds.catalog["0"]["price"], ds.catalog["1"]["price"]) == (1250.0, None)
    long_title = "x" * 140_000
    (tmp_path / "index.X.item.json").write_bytes(ITEMS_18)
    (tmp_path / "valid.X.csv").write_bytes(HEADER_18 + f'U1,[],{long_title},"[1, 2]",3,[],s\n'.encode())
    (tmp_path / "test.X.csv").write_bytes(HEADER_18 + b'U1,[],t,"[2, 3]",4,[],s\n')
    assert load_source("amazon18", tmp_path).interactions.sequences == [["1", "2", "3", "4"]]


def test_dropped_rows_are_summarised_by_reason(tmp_path):
    folder = jsonl_case(tmp_path, GOOD_ITEMS + [{"item_id": "a"}, {"item_id": "b"}, {"item_id": "c", "price": "inf"}],
                        [GOOD_USER, {"user_id": "u", "item_ids": ["zz"]}, {"user_id": "v", "item_ids": ["yy"]}])
    ds = load_source("jsonl", folder, skip_bad_rows=True)
    assert ds.extra_stats["dropped_by_reason"] == {"item_id: duplicate item id '…'": 2,
                                                   "item_ids: unknown item id '…'": 2,
                                                   "price: expected a finite number, got inf": 1}
