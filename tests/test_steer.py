"""Control vectors (`--steer`, `gptcli steer`) against independent oracles: the float64
reference forward pass with the vector added to each steered layer's output, the
gguf package reading the files gptcli writes, a float64 recomputation of `steer make`,
and (when built) llama.cpp's own llama-server and llama-cvector-generator.

Tolerances: llama.cpp quantizes activations and keeps K and V in f16, so its
probabilities differ from float64 by about 1% (FACTS.md); the tests allow 0.02 and
check that the steering moves the distribution by far more than that."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest
from support import llama_server_build
from support.reference_forward import forward, softmax
from support.tinymodel import TinyShape

from gptcli.inside import steering as S
from gptcli.llama.capture import capture
from gptcli.llama.engine import Engine, EngineOptions

PROMPT = "the cat sat on the mat and"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "steer"
HAPPY = (EXAMPLES / "happy.txt").read_text().splitlines()
SAD = (EXAMPLES / "sad.txt").read_text().splitlines()


@pytest.fixture(scope="module")
def deep_model(tiny_model_factory):
    return tiny_model_factory("deep", shape=TinyShape(n_layers=4))


@pytest.fixture(scope="module")
def random_vector(deep_model, tmp_path_factory):
    """Random directions for layers 1-3 of the 4-layer tiny model, written by gptcli,
    each as long as the residual stream it is added to (so it moves the answer)."""
    rng = np.random.default_rng(7)
    with Engine(deep_model, EngineOptions(n_ctx=256, n_threads=2)) as e:
        tokens = e.tokenize(PROMPT, add_bos=False)
    ref = forward(deep_model, tokens)
    directions = {}
    for n in (1, 2, 3):
        d = rng.standard_normal(64).astype(np.float32)
        directions[n] = (d / np.linalg.norm(d) * np.linalg.norm(ref.l_out[n][-1])).astype(
            np.float32
        )
    path = tmp_path_factory.mktemp("cvec") / "random.gguf"
    S.write_vector(path, S.ControlVector(directions, 64, "llama"))
    return path, directions, tokens


@pytest.fixture(scope="module")
def happy_files(tmp_path_factory):
    return EXAMPLES / "happy.txt", EXAMPLES / "sad.txt"


def lines(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


# -- the file ------------------------------------------------------------------------


def test_written_file_is_llama_cpp_control_vector_layout(random_vector):
    path, directions, _ = random_vector
    reader = gguf.GGUFReader(str(path))  # the gguf package as the independent reader
    field = reader.fields["general.architecture"]
    assert bytes(field.parts[field.data[0]]).decode() == "controlvector"
    count = reader.fields["controlvector.layer_count"]
    assert int(count.parts[count.data[0]][0]) == 3
    hint = reader.fields["controlvector.model_hint"]
    assert bytes(hint.parts[hint.data[0]]).decode() == "llama"
    names = {t.name: t for t in reader.tensors}
    assert sorted(names) == ["direction.1", "direction.2", "direction.3"]
    for n, d in directions.items():
        t = names[f"direction.{n}"]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32 and len(t.shape) == 1
        np.testing.assert_array_equal(np.asarray(t.data), d)


def test_reads_a_file_in_the_generators_layout(tmp_path):
    # written with gguf directly, as llama-cvector-generator lays it out
    w = gguf.GGUFWriter(str(tmp_path / "g.gguf"), "controlvector")
    w.add_string("controlvector.model_hint", "llama")
    w.add_int32("controlvector.layer_count", 2)
    w.add_tensor("direction.1", np.arange(4, dtype=np.float32))
    w.add_tensor("direction.3", -np.ones(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    v = S.read_vector(tmp_path / "g.gguf")
    assert v.n_embd == 4 and v.layers == [1, 3] and v.model_hint == "llama"
    data = S.combine([(v, 2.0)], 4, 5)  # llama_set_adapter_cvec's buffer: row N-1 is layer N
    np.testing.assert_array_equal(data[0], 2 * np.arange(4))
    np.testing.assert_array_equal(data[1], 0)
    np.testing.assert_array_equal(data[2], -2)


def _bad_vector(path, name="direction.1", data=None):
    w = gguf.GGUFWriter(str(path), "controlvector")
    w.add_tensor(name, np.zeros(8, dtype=np.float32) if data is None else data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.mark.parametrize(
    "kind, message",
    [
        ("width", "does not fit"),
        ("layers", "does not fit"),
        ("model", "is not a control vector"),
        ("zero", "direction.N with N >= 1"),
        ("f16", "1-D F32"),
        ("nan", "NaN"),
        ("text", "not GGUF"),
    ],
)
def test_a_vector_that_does_not_fit_is_one_line(kind, message, tmp_path, tiny_model, gptcli):
    bad = tmp_path / "bad.gguf"
    if kind == "width":  # 8 floats for a 64-wide model
        _bad_vector(bad)
    elif kind == "layers":  # layer 5 of a 2-layer model
        _bad_vector(bad, "direction.5", np.zeros(64, dtype=np.float32))
    elif kind == "model":
        bad = tiny_model
    elif kind == "zero":
        _bad_vector(bad, "direction.0", np.zeros(64, dtype=np.float32))
    elif kind == "f16":
        _bad_vector(bad, "direction.1", np.zeros(64, dtype=np.float16))
    elif kind == "nan":
        _bad_vector(bad, "direction.1", np.full(64, np.nan, dtype=np.float32))
    else:
        bad.write_text("hello")
    r = gptcli("next", "-m", str(tiny_model), "--steer", f"{bad}:2", "hello")
    assert r.returncode != 0 and r.stdout == ""
    assert r.stderr.startswith("gptcli: error: ") and r.stderr.count("\n") == 1, r.stderr
    assert message in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("command", ["next", "generate", "score"])
def test_a_server_refuses_steer_through_the_capability_table(command, gptcli, random_vector):
    from support.serverfixture import ReplayServer

    path, _, _ = random_vector
    server = ReplayServer()  # a recorded llama-server
    try:
        r = gptcli(command, "--server", server.url("llama-server-next"), "--steer", str(path),
                   *(["-"] if command == "score" else ["hi"]), input="hi there")  # fmt: skip
    finally:
        server.stop()
    assert r.returncode == 2 and r.stdout == ""
    assert "does not give control vectors (--steer): drop --steer" in r.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        (["--steer-layers", "1-1"], "--steer-layers needs --steer"),
        (["--steer", "VEC", "--steer-layers", "0-1"], "1 <= A <= B <= 3"),
        (["--steer", "VEC", "--steer-layers", "2-9"], "1 <= A <= B <= 3"),
        (["--steer", "VEC:nan"], "the scale must be a number"),
    ],
)
def test_bad_steer_options_are_usage_errors(args, message, gptcli, deep_model, random_vector):
    path, _, _ = random_vector
    args = [a.replace("VEC", str(path)) for a in args]
    r = gptcli("next", "-m", str(deep_model), *args, "hi")
    assert r.returncode == 2 and message in r.stderr, r.stderr


# -- applying: the float64 oracle -----------------------------------------------------


@pytest.mark.parametrize("layers, scale", [(None, 1.0), ("2-3", -1.5), ("2-2", 2.0)])
def test_next_steer_matches_the_float64_pass_with_the_vector_added(
    layers, scale, gptcli, deep_model, random_vector
):
    path, directions, tokens = random_vector
    first, last = (1, 3) if layers is None else map(int, layers.split("-"))
    add = {n: scale * d for n, d in directions.items() if first <= n <= last}
    want = softmax(forward(deep_model, tokens, add=add).logits[-1])
    plain = softmax(forward(deep_model, tokens).logits[-1])
    args = ["next", "-m", str(deep_model), "--json", "--top", "10", "--steer", f"{path}:{scale}"]
    r = gptcli(*args, *(["--steer-layers", layers] if layers else []), PROMPT)
    assert r.returncode == 0, r.stderr
    [step] = lines(r.stdout)
    got = {c["id"]: c for c in step["top"]}
    assert len(got) >= 10
    for tid, c in got.items():
        assert c["p_steered"] == pytest.approx(want[tid], abs=0.02), c["token"]
        assert c["p"] == pytest.approx(plain[tid], abs=0.02), c["token"]
        assert c["change"] == pytest.approx(c["p_steered"] - c["p"], abs=1e-9)
    # the vector moved the distribution by far more than the tolerance
    assert max(abs(c["change"]) for c in got.values()) > 0.1
    # and the vector is added where llama.cpp adds it: one layer later would not match
    shifted = {n + 1: v for n, v in add.items() if n + 1 < 4}
    wrong = softmax(forward(deep_model, tokens, add=shifted).logits[-1])
    assert max(abs(c["p_steered"] - wrong[t]) for t, c in got.items()) > 0.05


def test_steer_vectors_add_each_scaled(gptcli, deep_model, random_vector):
    # two --steer of one file at 0.5 and 1.0 are the file at 1.5
    path, directions, tokens = random_vector
    base = ["next", "-m", str(deep_model), "--json", "--top", "10"]
    twice = gptcli(*base, "--steer", f"{path}:0.5", "--steer", f"{path}:1", PROMPT)
    once = gptcli(*base, "--steer", f"{path}:1.5", PROMPT)
    assert twice.returncode == 0 and once.returncode == 0
    a, b = lines(twice.stdout)[0]["top"], lines(once.stdout)[0]["top"]
    assert [c["id"] for c in a] == [c["id"] for c in b]
    for x, y in zip(a, b, strict=True):
        assert x["p_steered"] == pytest.approx(y["p_steered"], abs=1e-5)


def test_capture_sees_the_vector(deep_model, random_vector):
    # what lens and attention read: the side context gets the same vector
    path, directions, tokens = random_vector
    add = {n: 1.0 * d for n, d in directions.items()}
    ref = forward(deep_model, tokens, add=add)
    with Engine(deep_model, EngineOptions(n_ctx=256, n_threads=2)) as e:
        v = S.read_vector(path)
        e.set_steering(S.combine([(v, 1.0)], e.n_embd, e.n_layer))
        cap = capture(e, tokens, lambda name: name.startswith("l_out-"))
    for n in range(4):
        got, want = cap.tensors[f"l_out-{n}"], ref.l_out[n]
        assert np.abs(got - want).max() / np.abs(want).max() < 0.01, n
    p = softmax(cap.logits[-1])
    assert np.abs(p - softmax(ref.logits[-1])).max() < 0.02


def test_steering_off_restores_the_distribution(deep_model, random_vector):
    path, _, tokens = random_vector
    with Engine(deep_model, EngineOptions(n_ctx=256, n_threads=2)) as e:
        before = e.prefill(tokens).copy()
        v = S.read_vector(path)
        e.set_steering(S.combine([(v, 3.0)], e.n_embd, e.n_layer))
        steered = e.prefill(tokens).copy()  # the cached prefix is dropped, not reused
        e.set_steering(None)
        after = e.prefill(tokens).copy()
    assert np.abs(steered - before).max() > 0.5
    np.testing.assert_allclose(after, before, atol=1e-4)


# -- making: a float64 recomputation ---------------------------------------------------


@pytest.mark.parametrize("method", ["mean", "pca"])
def test_make_last_position_matches_float64_differences(
    method, deep_model, happy_files, tmp_path, gptcli
):
    pos, neg = happy_files
    out = tmp_path / "v.gguf"
    r = gptcli(
        "steer", "make", "-m", str(deep_model), "--positive", str(pos), "--negative", str(neg),
        "-o", str(out), "--method", method, "--positions", "last",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and "wrote" in r.stderr
    v = S.read_vector(out)
    with Engine(deep_model, EngineOptions(n_ctx=256, n_threads=2, vocab_only=True)) as e:
        pairs = [(e.tokenize(p, special=True), e.tokenize(q, special=True)) for p, q in
                 zip(HAPPY, SAD, strict=True)]  # fmt: skip
    fwd = [(forward(deep_model, p), forward(deep_model, q)) for p, q in pairs]
    assert v.layers == [1, 2, 3]
    for n in v.layers:
        rows = np.stack([a.l_out[n][-1] - b.l_out[n][-1] for a, b in fwd])
        if method == "mean":
            want = rows.mean(axis=0)
        else:
            want = np.linalg.svd(rows, full_matrices=False)[2][0]
            want = want if (rows @ want).mean() > 0 else -want
        want /= np.linalg.norm(want)
        got = v.directions[n].astype(np.float64)
        assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-5)
        assert float(got @ want) > 0.995, n  # cosine; 1% activations error allowed
        assert (rows @ got).mean() > 0  # positive minus negative projects positively


def test_make_refuses_unpaired_files(tmp_path, gptcli, tiny_model):
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    (tmp_path / "b.txt").write_text("one\n")
    r = gptcli("steer", "make", "-m", str(tiny_model), "--positive", str(tmp_path / "a.txt"),
               "--negative", str(tmp_path / "b.txt"), "-o", str(tmp_path / "o.gguf"))  # fmt: skip
    assert r.returncode == 2 and "2 prompts" in r.stderr and "1" in r.stderr
    assert not (tmp_path / "o.gguf").exists()


# -- the embedded model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def happy_vector(happy_files, tmp_path_factory):
    pos, neg = happy_files
    out = tmp_path_factory.mktemp("smol") / "happy.gguf"
    from conftest import run_gptcli

    r = run_gptcli("steer", "make", "--positive", str(pos), "--negative", str(neg),
                   "-o", str(out), "--threads", "2")  # fmt: skip
    assert r.returncode == 0, r.stderr
    return out


def test_sweep_at_scale_zero_is_the_unsteered_greedy_text(happy_vector, gptcli):
    r = gptcli("steer", "sweep", str(happy_vector), "--scales", "-4,0,4", "-n", "10",
               "Today I feel")  # fmt: skip
    assert r.returncode == 0, r.stderr
    rows = r.stdout.splitlines()
    assert [row.split()[0] for row in rows] == ["-4", "+0", "+4"]
    plain = gptcli("generate", "--raw", "-t", "0", "-n", "10", "Today I feel")
    assert rows[1].split(None, 1)[1] == plain.stdout.strip()
    assert len({row.split(None, 1)[1] for row in rows}) == 3  # each scale says another thing


def test_happy_vector_raises_happy_words_on_smollm2(happy_vector, gptcli):
    r = gptcli("next", "--json", "--top", "20", "--steer", f"{happy_vector}:4", "Today I feel")
    assert r.returncode == 0, r.stderr
    got = {c["token"]: c for c in lines(r.stdout)[0]["top"]}
    happy = [t for t in (" excited", " inspired", " happy", " free", " confident") if t in got]
    assert happy and all(got[t]["change"] > 0 for t in happy)
    assert got[" like"]["change"] < -0.05  # the unsteered favourite falls


def test_lens_steer_shows_where_the_answer_changes(happy_vector, gptcli):
    r = gptcli("lens", "--json", "--steer", f"{happy_vector}:4", "Today I feel")
    assert r.returncode == 0, r.stderr
    [obj] = lines(r.stdout)
    assert obj["answer"] != obj["answer_steered"]
    at = obj["answer_changes_at_layer"]
    layers = obj["layers"]
    assert 1 <= at <= 29
    for row in layers:  # from that layer on the two lenses disagree, just before they agree
        if row["layer"] >= at:
            assert row["top"] != row["top_steered"]
    assert layers[at - 1]["top"] == layers[at - 1]["top_steered"]
    # the last layer's steered lens is the steered answer (the capture saw the vector)
    assert layers[-1]["top_steered"] == obj["answer_steered"]


# -- llama.cpp's own tools --------------------------------------------------------------

SERVER = llama_server_build.find("llama-server")
GENERATOR = llama_server_build.find("llama-cvector-generator")


@pytest.mark.skipif(
    SERVER is None, reason="llama-server is not built (tests/support/llama_server_build.py)"
)
@pytest.mark.parametrize("scale", [4.0, -4.0])
def test_llama_server_with_the_file_gives_the_same_top10(scale, happy_vector, smollm2, gptcli):
    from support.serverfixture import NativeLlamaServer

    server = NativeLlamaServer(
        SERVER, smollm2, 1, "--control-vector-scaled", f"{happy_vector}:{scale}"
    )
    try:
        remote = gptcli("next", "--json", "--top", "10", "--server", server.url, "Today I feel")
    finally:
        server.stop()
    local = gptcli(
        "next", "--json", "--top", "10", "--steer", f"{happy_vector}:{scale}", "Today I feel"
    )
    assert remote.returncode == 0 and local.returncode == 0, remote.stderr + local.stderr
    theirs = {c["id"]: c["probs"][0] for c in lines(remote.stdout)[0]["top"]}
    ours = {c["id"]: c["p_steered"] for c in lines(local.stdout)[0]["top"]}
    top10 = sorted(theirs, key=theirs.get, reverse=True)[:10]
    for tid in top10:
        assert ours.get(tid, 0.0) == pytest.approx(theirs[tid], abs=0.01), tid


@pytest.mark.skipif(
    GENERATOR is None,
    reason="llama-cvector-generator is not built (tests/support/llama_server_build.py)",
)
def test_make_mean_equals_llama_cvector_generator(happy_files, happy_vector, smollm2, tmp_path):
    # gptcli's default (--positions all) is the generator's position convention: every
    # position where the pair differs, the shorter prompt padded with a space token.
    # The generator reads direction N from l_out-(N-1) (it collects l_out-0..n-2 and names
    # them 1..n-1); gptcli from l_out-N, where llama.cpp adds it. So its direction N+1 is
    # gptcli's N.
    pos, neg = happy_files
    out = tmp_path / "theirs.gguf"
    subprocess.run(
        [str(GENERATOR), "-m", str(smollm2), "--positive-file", str(pos), "--negative-file",
         str(neg), "-o", str(out), "--method", "mean", "-t", "2", "-fa", "off"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    theirs, ours = S.read_vector(out), S.read_vector(happy_vector)
    assert theirs.layers == list(range(1, 30))
    for n in range(1, 29):
        a, b = ours.directions[n], theirs.directions[n + 1]
        assert np.abs(a - b).max() / np.abs(b).max() < 1e-3, n


# -- chat and explore ----------------------------------------------------------------------


def test_chat_slash_steer_is_chat_steer_and_off_switches_it_off(happy_vector, gptcli):
    ask = "Say how you feel today in one sentence.\n"
    base = ["chat", "-t", "0", "-n", "16", "--threads", "2"]
    by_option = gptcli(*base, "--steer", f"{happy_vector}:6", input=ask)
    by_command = gptcli(*base, input=f"/steer {happy_vector} 6\n" + ask)
    unsteered = gptcli(*base, input=ask)
    switched_off = gptcli(*base, input=f"/steer {happy_vector} 6\n/steer off\n" + ask)
    for r in (by_option, by_command, unsteered, switched_off):
        assert r.returncode == 0, r.stderr
    assert by_command.stdout == by_option.stdout
    assert unsteered.stdout != by_option.stdout
    assert switched_off.stdout == unsteered.stdout
    assert "steering with happy.gguf × 6" in by_command.stderr


def test_explore_keys_rescale_and_switch_off_the_vector(deep_model, random_vector):
    from test_explore import drive, session_for

    from gptcli.sampling.distribution import probs_at

    path, _, _ = random_vector
    v = S.read_vector(path)

    def probs_under(scale):
        with Engine(deep_model, EngineOptions(n_ctx=128, n_threads=1)) as e:
            if scale:
                e.set_steering(S.combine([(v, scale)], e.n_embd, e.n_layer))
            return probs_at(e.prefill(e.tokenize(PROMPT, add_bos=False)).astype(float), 1.0)

    with Engine(deep_model, EngineOptions(n_ctx=128, n_threads=1)) as e:
        e.set_steering(S.combine([(v, 1.0)], e.n_embd, e.n_layer))
        s = session_for(e, PROMPT)
        seen = {}

        async def check(app, pilot):
            for keys, name in (((), "x1"), (("V",), "x1.5"), (("o",), "off"), (("o",), "on")):
                if keys:
                    await pilot.press(*keys)
                    await pilot.pause()
                seen[name] = (s.view().model_probs.copy(), str(app.render_status()))

        drive(s, check=check)
    assert "steer ×1.5" in seen["x1.5"][1] and "steer off" in seen["off"][1]
    np.testing.assert_allclose(seen["x1"][0], probs_under(1.0), atol=1e-4)
    np.testing.assert_allclose(seen["x1.5"][0], probs_under(1.5), atol=1e-4)
    np.testing.assert_allclose(seen["off"][0], probs_under(0), atol=1e-4)
    np.testing.assert_allclose(seen["on"][0], probs_under(1.5), atol=1e-4)
    assert np.abs(seen["x1.5"][0] - seen["off"][0]).max() > 0.05
