import pandas as pd
import pytest

from valharm.data.touche import SAMPLE_PATH, load_arguments, load_splits, split_arguments
from valharm.errors import ValharmError
from valharm.values.distributions import VALUES


def test_shipped_sample_is_valid_and_covers_every_value():
    frame = load_arguments()
    assert len(frame) >= 40
    assert (frame[list(VALUES)].sum() > 0).all()


def test_real_file_reads_by_column_name(shared_data):
    frame = load_arguments(str(shared_data / "valueEval_10.csv"))
    assert len(frame) == 7374
    first = frame.iloc[0]
    assert first["Conclusion"] == "We should ban human cloning" and first["Security"] == 1
    assert first[list(VALUES)].sum() == 1


def test_columns_are_found_by_name_in_any_order(tmp_path):
    frame = pd.read_csv(SAMPLE_PATH, sep="\t", index_col=0)
    shuffled = frame[list(reversed(frame.columns))]
    shuffled.to_csv(tmp_path / "r.tsv", sep="\t")
    again = load_arguments(str(tmp_path / "r.tsv"))
    pd.testing.assert_frame_equal(again, load_arguments(str(SAMPLE_PATH)))


def test_missing_value_columns_are_named(tmp_path):
    frame = pd.read_csv(SAMPLE_PATH, sep="\t", index_col=0).drop(columns=["Power", "Tradition"])
    frame.to_csv(tmp_path / "bad.tsv", sep="\t")
    with pytest.raises(ValharmError, match="missing column\\(s\\) Power, Tradition"):
        load_arguments(str(tmp_path / "bad.tsv"))


def test_empty_file_and_missing_file(tmp_path):
    pd.read_csv(SAMPLE_PATH, sep="\t", index_col=0).head(0).to_csv(tmp_path / "empty.tsv", sep="\t")
    with pytest.raises(ValharmError, match="holds no arguments"):
        load_arguments(str(tmp_path / "empty.tsv"))
    with pytest.raises(ValharmError, match="not found"):
        load_arguments(str(tmp_path / "nope.tsv"))


def test_level2_labels_are_mapped():
    level2 = {"Power": ["Power: dominance", "Face"], **{v: [v] for v in VALUES if v != "Power"}}
    row = {"Conclusion": "c", "Stance": "against", "Premise": "p", "Face": 1, "Power: dominance": 0,
           **{v: 0 for v in VALUES if v != "Power"}}
    frame = pd.DataFrame([row])
    from valharm.data.touche import map_level2
    assert map_level2(frame, level2, "x").loc[0, "Power"] == 1


def test_split_is_80_10_10_and_seeded():
    frame = load_arguments()
    parts = split_arguments(frame, seed=42)
    assert [len(parts[s]) for s in ("train", "valid", "test")] == [39, 5, 5]
    again = split_arguments(frame, seed=42)
    pd.testing.assert_frame_equal(parts["valid"], again["valid"])
    assert set(parts["train"]["Premise"]).isdisjoint(parts["test"]["Premise"])


def test_split_reproduces_the_studys_split_files(shared_data):
    parts = load_splits(str(shared_data / "valueEval_10.csv"), seed=42)
    for name in ("train", "valid", "test"):
        study = pd.read_csv(shared_data / f"touche_split_{name}.csv", sep="\t")
        assert len(parts[name]) == len(study)
        for column in ("Conclusion", "Stance", "Premise", "Power"):  # the same rows, in the same order
            assert parts[name][column].tolist() == study[column].tolist()


def test_pre_split_files_are_read_as_given(shared_data):
    files = {name: str(shared_data / f"touche_split_{name}.csv") for name in ("train", "valid", "test")}
    parts = load_splits(splits=files)
    assert [len(parts[n]) for n in ("train", "valid", "test")] == [5899, 738, 737]
    with pytest.raises(ValharmError, match="lacks test"):
        load_splits(splits={"train": files["train"], "valid": files["valid"]})


def test_the_cue_names_every_label_and_leaves_the_real_arguments_as_they_are(shared_data):
    from valharm.data.touche import cue_labels, labelled_values, labels_from_cue
    from valharm.values.questionnaire import argument_statement

    arguments = load_splits(shared_data / "valueEval_10.csv")["train"]
    before = arguments.copy()
    cued = cue_labels(arguments)
    recovered = [labels_from_cue(argument_statement(row)) == labelled_values(row) for _, row in cued.iterrows()]
    assert sum(recovered) == len(arguments)  # the keyword rule's ceiling is 1.0
    assert arguments.equals(before)  # the real arm is unchanged
    assert not any(labels_from_cue(argument_statement(row)) for _, row in arguments.head(200).iterrows())
