"""Log-likelihood under a real chat template scores exactly the continuation's tokens: not the end-of-turn token, not
what the template writes after it, whether the tokenizer's EOS is the end-of-turn token (Qwen2.5 Instruct) or not
(Qwen2.5 base with a ChatML template)."""

from __future__ import annotations

import pytest
import torch

from ett_lightning import ETTLoss, ETTModule, LanguageModel, MLPProjector
from ett_lightning.checkpoints.export import export_module
from ett_lightning.data.input_spec import InputSpec
from ett_lightning.evaluation import InferenceModel
from tests.chat_model import CHATML_TEMPLATE, SPECIAL_TOKENS, make_chat_model_dir, make_tokenizer_dir
from tests.conftest import IMAGE_SIZE, tiny_tokenizer


@pytest.fixture(scope="module", params=["<|im_end|>", "<|endoftext|>"], ids=["eos_ends_turn", "eos_apart"])
def chat_export(request, tmp_path_factory):
    llm_dir = make_chat_model_dir(tmp_path_factory.mktemp("llm"), hidden_size=32)
    make_tokenizer_dir(llm_dir, CHATML_TEMPLATE, SPECIAL_TOKENS, eos=request.param, pad="<|endoftext|>")
    torch.manual_seed(0)
    module = ETTModule(tokenizer=tiny_tokenizer(), projector=MLPProjector(8, 32),
                       language_model=LanguageModel(pretrained=str(llm_dir)), loss=ETTLoss(perceptual_weight=0.0))
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return export_module(module, tmp_path_factory.mktemp("export"), inputs=InputSpec(IMAGE_SIZE))


def hand_score(model: InferenceModel, image, question: str, continuation: str) -> tuple[float, bool, list[int]]:
    """The sum of log p(token | everything before it) over the continuation's own tokens, from one forward."""
    sequence = model.sample(image, question, continuation)["sequence"]
    tokens = model.language_model.tokenizer.encode(continuation, add_special_tokens=False)
    start = sequence.target_start
    assert sequence.input_ids[start:start + len(tokens)] == tokens  # the answer sits where the template puts it
    batch = model.batch([image], [question], [continuation])
    logits = model.language_model(batch.input_ids, None, model.image_embeddings(batch), batch.image_slots).logits[0]
    log_probs = torch.log_softmax(logits.float(), -1)
    total = sum(log_probs[start + i - 1, token].item() for i, token in enumerate(tokens))
    greedy = all(int(log_probs[start + i - 1].argmax()) == token for i, token in enumerate(tokens))
    return total, greedy, sequence.input_ids[start + len(tokens):]


def test_chat_log_likelihood_scores_the_continuation_alone(chat_export):
    from PIL import Image

    model = InferenceModel.from_export(str(chat_export), prompt="chat")
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (200, 30, 30))
    question = "What colour is the text?"
    for continuation in ("green", "It is green.", "Yes"):
        (score, greedy), = model.log_likelihood([image], [question], [continuation])
        expected, expected_greedy, after = hand_score(model, image, question, continuation)
        end_of_turn = model.language_model.tokenizer.convert_tokens_to_ids("<|im_end|>")
        assert after[0] == end_of_turn  # what follows the continuation is the end of the turn, not scored
        assert score == pytest.approx(expected, abs=1e-4)
        assert greedy == expected_greedy
    greens = model.log_likelihood([image, image], [question] * 2, ["green", "red"])
    assert greens[0][0] != greens[1][0]
