"""A SQuAD record without a context, through `multistep run`: exit 2, one sentence naming the file and the record,
nothing registered."""

import json


def test_a_paragraph_without_context_is_refused_with_file_and_record(tmp_path, run_cli, registered_versions):
    path = tmp_path / "squad.json"
    qas = [{"id": "q1", "question": "Who?", "answers": [{"text": "Ada", "answer_start": 0}]}]
    path.write_text(
        json.dumps(
            {
                "data": [
                    {"title": "A", "paragraphs": [{"context": "Ada wrote it.", "qas": qas}]},
                    {"title": "B", "paragraphs": [{"context": "Ada wrote it.", "qas": qas}, {"qas": qas}]},
                ]
            }
        )
    )
    home = tmp_path / "home"
    result = run_cli(["run", "configs/squad-minilm.yaml", "--set", f"labeled.train=[{path}]"], home)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {path}:data[1].paragraphs[1]: the record has no context; give it one or remove the record"
    ]
    assert registered_versions(home) == []
