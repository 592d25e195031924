"""VQATask.evaluate's breakdowns: per answer type (padded labels merged) and per question type."""

import pytest
import torch
from PIL import Image

from vislm.config import load_config
from vislm.data.formats._json import single_answer_set
from vislm.data.formats.vqav2 import VQARecord
from vislm.data.tokenizer import train_tokenizer
from vislm.tasks import VQATask
from vislm.tasks.data import SplitRecords

# (answer, answer_type, question_type, predicted): padded "CLOSED " as VQA-RAD ships it.
ROWS = [
    ("yes", "CLOSED", "PRES", "yes"),
    ("no", "CLOSED ", "PRES", "yes"),
    ("yes", "CLOSED ", "POS", "yes"),
    ("left", "OPEN", "POS", "left"),
    ("lung", "OPEN", "ORGAN", "left"),
    ("no", "OPEN", None, "no"),
]


class PlannedAnswers(torch.nn.Module):
    """Answers the questions in order (evaluation does not shuffle) with planned answers."""

    def __init__(self, vocabulary, planned):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))  # model_device() reads a parameter
        self.indices = [vocabulary.index[a] for a in planned]
        self.size = len(vocabulary)

    def predict(self, pixel_values, input_ids, attention_mask):
        batch, self.indices = self.indices[:len(pixel_values)], self.indices[len(pixel_values):]
        return torch.nn.functional.one_hot(torch.tensor(batch), self.size).float()


@pytest.fixture
def task(tmp_path):
    image = tmp_path / "scan.png"
    Image.new("RGB", (32, 32), (90, 90, 90)).save(image)
    records = [VQARecord(i, 0, image, f"question {i}?", single_answer_set(a), a, at, qt)
               for i, (a, at, qt, _) in enumerate(ROWS)]
    cfg = load_config(None, ["task=vqa", "data.image_size=16", "eval.batch_size=4"])
    splits = {"train": SplitRecords("train", questions=records),
              "test": SplitRecords("test", questions=list(records))}
    tokenizer = train_tokenizer([r.question for r in records] + [r[0] for r in ROWS], 60)
    return VQATask(cfg, tokenizer, splits)


def test_accuracy_by_answer_type_and_question_type(task):
    model = PlannedAnswers(task.vocabulary, [r[3] for r in ROWS])
    metrics = task.evaluate(model, "test")
    assert metrics["accuracy"] == pytest.approx(4 / 6)
    # "CLOSED " and "CLOSED" are one group: no key with a trailing space.
    assert metrics["accuracy/CLOSED"] == pytest.approx(2 / 3)
    assert metrics["accuracy/OPEN"] == pytest.approx(2 / 3)
    assert metrics["accuracy/qtype/PRES"] == pytest.approx(1 / 2)
    assert metrics["accuracy/qtype/POS"] == pytest.approx(1.0)
    assert metrics["accuracy/qtype/ORGAN"] == pytest.approx(0.0)
    # A question without a type counts overall only.
    assert set(metrics) == {"accuracy", "accuracy/CLOSED", "accuracy/OPEN", "accuracy/qtype/PRES",
                            "accuracy/qtype/POS", "accuracy/qtype/ORGAN"}
