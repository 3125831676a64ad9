"""Offline, single-threaded tests (see STACK-NOTES: thread contention is catastrophic)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Every subprocess a test starts (kedro, dvc, torchrun) inherits one thread too: with two
# xdist workers on two cores, a second thread per process only contends.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    """The slow tests (whole Kedro runs, subprocesses) first, in their files' order: the
    two xdist workers then end on short tests, not one of them on a long test alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(scope="session")
def tokenizer():
    from tests.fixtures import gpt2_tokenizer

    return gpt2_tokenizer()


@pytest.fixture
def tiny(tokenizer):
    """A fresh 2-layer Llama (same seed every time) with the ChatML GPT-2 tokenizer."""
    from tests.fixtures import tiny_model

    return tiny_model(tokenizer, seed=0)


@pytest.fixture
def rows():
    prompts = ["how are you?", "what is your dog called?", "do you like tea?",
               "where do you live?", "any plans this weekend?", "what music do you like?"]
    answers = ["great thanks!", "his name is Rex", "yes, green tea", "in a small town",
               "hiking with friends", "jazz and some rock"]
    return [{"prompt": p, "reference": a} for p, a in zip(prompts, answers, strict=True)]
