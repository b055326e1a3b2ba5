import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TEXT = ("The quick brown fox jumps over the lazy dog. A cat sat on the mat and looked at "
        "the moon. Rivers flow into the sea; mountains rise above the clouds. Numbers: 1 2 3 "
        "4 5 6 7 8 9 10. History, science, music and art fill the old library on the hill.")


def word_corpus(path, seed, paragraphs, words_each, words=None, extra=()):
    """Write paragraphs of random TEXT words (plus ``extra`` paragraphs) to ``path``."""
    import numpy as np
    words = words or TEXT.split()
    rng = np.random.default_rng(seed)
    paras = [" ".join(rng.choice(words, size=words_each)) for _ in range(paragraphs)]
    path.write_text("\n\n".join(paras + list(extra)), encoding="utf-8")
    return str(path)


def make_tokenizer(vocab_size=300):
    """A small byte-level BPE tokenizer trained in memory (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<bos>", "<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEXT] * 5, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>")


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


def tiny_llama(tokenizer, seed=0, layers=3):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, bos_token_id=0, eos_token_id=1,
                      pad_token_id=1, rope_theta=10000.0, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(tokenizer, seed=0, layers=3):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=layers, n_head=4,
                     n_positions=128, bos_token_id=0, eos_token_id=1)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture(scope="session")
def llama(tokenizer):
    import featviz
    return featviz.wrap_model(tiny_llama(tokenizer), tokenizer, name="tiny-llama")


@pytest.fixture(scope="session")
def gpt2(tokenizer):
    import featviz
    return featviz.wrap_model(tiny_gpt2(tokenizer), tokenizer, name="tiny-gpt2")


@pytest.fixture(params=["llama", "gpt2"])
def tiny(request, llama, gpt2):
    return {"llama": llama, "gpt2": gpt2}[request.param]


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny Llama saved as safetensors, loadable with --model DIR (CLI tests)."""
    d = tmp_path_factory.mktemp("tiny-model")
    tok = make_tokenizer()
    tiny_llama(tok, seed=5).save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    return str(d)


@pytest.fixture(scope="session")
def smollm():
    import featviz
    return featviz.load_model("smollm2-135m")
