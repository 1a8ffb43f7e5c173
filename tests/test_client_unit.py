"""Unit tests of mmserve.client's pure parts: request building, response parsing,
error mapping, image/audio preparation. No server is needed; the few transport
tests talk real gRPC to a closed port."""
from __future__ import annotations

import asyncio
import io
import json
import pickle
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from mmserve.client import (
    AsyncClient,
    Classification,
    Client,
    DeadlineExceededError,
    Entity,
    InvalidInputError,
    MmserveError,
    ModelInfo,
    ModelNotReadyError,
    PermissionDeniedError,
    RetryPolicy,
    ServerError,
    ServerUnavailableError,
    ZeroShotResult,
)
from mmserve.client import codec, media
from mmserve.client._base import pin_version
from mmserve.client._channel import Connection
from mmserve.client.retry import Attempts, Resend, RetryBudget
from mmserve.client._transport import SERVER, Deadline, normalize_url, pipeline_names, readiness_error
from mmserve.client.errors import ServerCertificateError, ServerNameMismatchError, from_triton, status_name
from mmserve.pipelines import (
    AUDIO,
    EMBEDDING,
    ENTITIES,
    IMAGE,
    LABEL,
    LABELS,
    MAX_BATCH_SIZE,
    PROBS,
    SAMPLE_RATE,
    TEXT,
    Kind,
    spec,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8"


def _rgb(h: int = 8, w: int = 6) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """int16 [n] or [n, channels] -> WAV bytes, written with the stdlib only."""
    frames = samples if samples.ndim == 2 else samples[:, None]
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(frames.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames.astype("<i2").tobytes())
    return out.getvalue()


def _exc(status: str | None, message: str) -> InferenceServerException:
    return InferenceServerException(msg=message, status=status)


# --- request building -------------------------------------------------------------


def test_single_text_is_one_request_of_one_utf8_item() -> None:
    plan = codec.plan_embed_text("héllo")
    (request,) = plan.requests
    text = request.input(TEXT.name)
    assert text.dtype == np.object_ and text.shape == (1, 1)
    assert text[0, 0] == "héllo".encode("utf-8") and isinstance(text[0, 0], bytes)
    assert request.outputs == tuple(t.name for t in spec(Kind.TEXT_EMBED).outputs)


@pytest.mark.parametrize(
    ("build", "kind"),
    [
        (lambda x: codec.plan_embed_text(x), Kind.TEXT_EMBED),
        (lambda x: codec.plan_embed_text(x, kind=Kind.CLIP_TEXT_EMBED), Kind.CLIP_TEXT_EMBED),
        (codec.plan_classify_text, Kind.TEXT_CLASSIFY),
        (codec.plan_extract_entities, Kind.TEXT_NER),
    ],
)
def test_text_requests_follow_the_contract(build, kind: Kind) -> None:
    (request,) = build(["a", "b"]).requests
    contract = spec(kind)
    assert [(t.name, t.triton_dtype) for t, _ in request.inputs] == [
        (t.name, t.triton_dtype) for t in contract.inputs
    ]
    assert request.outputs == tuple(t.name for t in contract.outputs)
    assert request.input(TEXT.name).shape == (2, 1)


def test_big_batches_are_chunked_at_max_batch_size() -> None:
    n = 2 * MAX_BATCH_SIZE + 3
    plan = codec.plan_classify_text([f"t{i}" for i in range(n)])
    assert [r.batch_size for r in plan.requests] == [MAX_BATCH_SIZE, MAX_BATCH_SIZE, 3]
    assert plan.requests[1].input(TEXT.name)[0, 0] == f"t{MAX_BATCH_SIZE}".encode()
    assert codec.chunk_ranges(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert codec.chunk_ranges(0) == []


def test_chunked_responses_are_stitched_back_in_order() -> None:
    plan = codec.plan_embed_text([str(i) for i in range(5)], max_batch=2)
    assert [r.batch_size for r in plan.requests] == [2, 2, 1]
    outputs = [
        {EMBEDDING.name: np.full((r.batch_size, 3), k, dtype=np.float32)} for k, r in enumerate(plan.requests)
    ]
    embeddings = plan.finish(outputs)
    assert embeddings.shape == (5, 3) and embeddings.dtype == np.float32
    assert embeddings[:, 0].tolist() == [0, 0, 1, 1, 2]
    embeddings[0, 0] = 7.0  # writable, not a view of a response buffer


def test_single_text_embedding_is_one_vector() -> None:
    plan = codec.plan_embed_text("x")
    vector = plan.finish([{EMBEDDING.name: np.ones((1, 4), dtype=np.float32)}])
    assert vector.shape == (4,)


def test_empty_lists_make_no_request_and_an_empty_result() -> None:
    assert codec.plan_embed_text([]).requests == ()
    assert codec.plan_embed_text([]).finish([]).shape == (0, 0)
    assert codec.plan_classify_text([]).finish([]) == []
    assert codec.plan_extract_entities(()).finish([]) == []
    assert codec.plan_embed_images([]).finish([]).shape == (0, 0)
    assert codec.plan_zero_shot([], ["a"]).finish([]) == []
    assert codec.plan_classify_audio([]).finish([]) == []


def test_bad_text_input_is_refused_before_sending() -> None:
    with pytest.raises(InvalidInputError, match="text 1 has type int"):
        codec.plan_embed_text(["ok", 3])  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="str or a list of str"):
        codec.plan_embed_text(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="surrogate"):
        codec.plan_embed_text("bad \ud800")


def test_to_triton_builds_tritonclient_inputs() -> None:
    (request,) = codec.plan_zero_shot([_rgb(), _rgb()], ["cat", "dog", "bird"]).requests
    inputs, outputs = codec.to_triton(request)
    assert [(i.name(), i.datatype(), i.shape()) for i in inputs] == [
        (IMAGE.name, "BYTES", [2, 1]),
        (LABELS.name, "BYTES", [2, 3]),
    ]
    assert all(isinstance(o, grpcclient.InferRequestedOutput) for o in outputs)


# --- images -----------------------------------------------------------------------


def test_pil_rgb_is_jpeg_and_other_modes_are_png() -> None:
    rgb = Image.fromarray(_rgb())
    assert media.encode_image(rgb).startswith(JPEG_MAGIC)
    assert media.encode_image(rgb, "png").startswith(PNG_MAGIC)
    rgba = Image.fromarray(np.zeros((4, 4, 4), dtype=np.uint8))
    encoded = media.encode_image(rgba)
    assert encoded.startswith(PNG_MAGIC)
    assert Image.open(io.BytesIO(encoded)).mode == "RGBA"  # alpha kept for the server to handle
    cmyk = Image.new("CMYK", (4, 4))
    assert Image.open(io.BytesIO(media.encode_image(cmyk, "png"))).mode == "RGB"


def test_numpy_images_are_encoded_with_their_size() -> None:
    pixels = _rgb(10, 7)
    decoded = Image.open(io.BytesIO(media.encode_image(pixels)))
    assert decoded.size == (7, 10) and decoded.mode == "RGB"
    lossless = np.asarray(Image.open(io.BytesIO(media.encode_image(pixels, "png"))))
    np.testing.assert_array_equal(lossless, pixels)
    gray = Image.open(io.BytesIO(media.encode_image(np.zeros((5, 5, 1), dtype=np.uint8))))
    assert gray.mode == "L"


def test_bytes_and_paths_are_sent_as_they_are(tmp_path: Path) -> None:
    data = b"not decoded on the client"
    assert media.encode_image(data) == data
    assert media.encode_image(bytearray(data)) == data
    file = tmp_path / "x.jpg"
    file.write_bytes(data)
    assert media.encode_image(file) == data
    assert media.encode_image(str(file)) == data


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((4, 4, 3), dtype=np.float32), "uint8"),
        (np.zeros((3, 4, 4, 2), dtype=np.uint8)[0], "HxWxC"),
        (b"", "empty"),
        ("/no/such/image.png", "cannot read"),
        ("https://example.com/cat.jpg", "URL"),
        (3.5, "type float"),
    ],
)
def test_bad_images_are_refused_with_advice(image: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        media.encode_image(image)  # type: ignore[arg-type]


def test_image_batches_and_chunks() -> None:
    batch = np.stack([_rgb()] * 3)  # [N, H, W, C] is a batch
    plan = codec.plan_embed_images(batch, max_batch=2)
    assert [r.input(IMAGE.name).shape for r in plan.requests] == [(2, 1), (1, 1)]
    assert codec.plan_embed_images(_rgb()).requests[0].input(IMAGE.name).shape == (1, 1)


def test_zero_shot_sends_labels_per_image() -> None:
    (one,) = codec.plan_zero_shot(_rgb(), ["cat", "dog"]).requests
    labels = one.input(LABELS.name)
    assert labels.shape == (1, 2) and labels.dtype == np.object_
    assert labels.tolist() == [[b"cat", b"dog"]]
    (three,) = codec.plan_zero_shot([_rgb()] * 3, ("cat", "dog")).requests
    assert three.input(LABELS.name).shape == (3, 2)
    assert three.input(IMAGE.name).shape == (3, 1)


@pytest.mark.parametrize(("labels", "message"), [("cat", "not one string"), ([], "empty"), (["a", 1], "label 1")])
def test_zero_shot_refuses_bad_labels(labels: object, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        codec.plan_zero_shot(_rgb(), labels)  # type: ignore[arg-type]


# --- audio ------------------------------------------------------------------------


def test_int16_audio_becomes_float_in_unit_range() -> None:
    samples = np.array([-32768, 0, 16384, 32767], dtype=np.int16)
    out = media.to_mono_float32(samples)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [-1.0, 0.0, 0.5, 32767 / 32768])


def test_stereo_audio_is_downmixed_by_mean() -> None:
    stereo = np.array([[0.5, -0.5], [1.0, 0.0], [0.2, 0.4]], dtype=np.float64)
    np.testing.assert_allclose(media.to_mono_float32(stereo), [0.0, 0.5, 0.3], rtol=1e-6)


@pytest.mark.parametrize(
    ("audio", "rate", "message"),
    [
        (np.zeros(100, dtype=np.float32), None, "sample_rate"),
        (np.zeros((2, 16000), dtype=np.float32), 16000, "transpose"),
        (np.zeros(0, dtype=np.float32), 16000, "empty"),
        (np.zeros(10, dtype=np.complex64), 16000, "dtype"),
        (np.zeros(10, dtype=np.float32), 0, "positive"),
        (b"definitely not audio", None, "cannot decode"),
        ([1, 2, 3], 16000, "type int"),
    ],
)
def test_bad_audio_is_refused_with_advice(audio: object, rate: int | None, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        codec.plan_classify_audio(audio, rate)  # type: ignore[arg-type]


def test_audio_request_shapes_and_dtypes() -> None:
    (request,) = codec.plan_classify_audio(np.zeros(1600, dtype=np.int16), 16000).requests
    audio, rate = request.input(AUDIO.name), request.input(SAMPLE_RATE.name)
    assert audio.shape == (1, 1600) and audio.dtype == np.float32
    assert rate.shape == (1, 1) and rate.dtype == np.int32 and rate[0, 0] == 16000
    assert request.outputs == tuple(t.name for t in spec(Kind.AUDIO_CLASSIFY).outputs)
    (embed,) = codec.plan_embed_audio(np.zeros(8, dtype=np.float32), 8000).requests
    assert embed.outputs == (EMBEDDING.name,)


def test_audio_lists_of_different_lengths_go_one_request_per_clip() -> None:
    clips = [np.zeros(n, dtype=np.float32) for n in (100, 250, 100)]
    plan = codec.plan_classify_audio(clips, 16000)
    assert [r.input(AUDIO.name).shape for r in plan.requests] == [(1, 100), (1, 250), (1, 100)]
    assert all(r.input(SAMPLE_RATE.name).shape == (1, 1) for r in plan.requests)


def test_audio_lists_of_one_length_go_as_one_batch() -> None:
    plan = codec.plan_embed_audio([np.zeros(100, dtype=np.float32)] * 3, 16000, max_batch=2)
    assert [r.input(AUDIO.name).shape for r in plan.requests] == [(2, 100), (1, 100)]
    assert plan.requests[0].input(SAMPLE_RATE.name).tolist() == [[16000], [16000]]


def test_audio_files_are_decoded_and_downmixed(tmp_path: Path) -> None:
    stereo = np.stack([np.full(50, 16384, np.int16), np.zeros(50, np.int16)], axis=1)
    data = _wav_bytes(stereo, 22050)
    samples, rate = media.load_audio(data, None)
    assert rate == 22050 and samples.shape == (50,) and samples.dtype == np.float32
    np.testing.assert_allclose(samples, 0.25, atol=1e-4)
    path = tmp_path / "clip.wav"
    path.write_bytes(data)
    (request,) = codec.plan_classify_audio(path).requests
    assert request.input(SAMPLE_RATE.name)[0, 0] == 22050
    with pytest.raises(InvalidInputError, match="22050 Hz"):
        media.load_audio(path, 16000)
    with pytest.raises(InvalidInputError, match="no such file"):
        media.load_audio(tmp_path / "missing.wav", None)


# --- response parsing -------------------------------------------------------------


def test_entities_json_becomes_entities() -> None:
    cells = np.array(
        [
            [json.dumps([{"text": "Ada", "label": "PER", "start": 0, "end": 3, "score": 0.9}]).encode()],
            [b"[]"],
        ],
        dtype=np.object_,
    )
    parsed = codec.parse_entities({ENTITIES.name: cells}, 2)
    assert parsed == [[Entity("Ada", "PER", 0, 3, pytest.approx(0.9))], []]
    assert isinstance(parsed[0][0].start, int)


@pytest.mark.parametrize("cell", [b"not json", b'{"a": 1}', b'[{"text": "x"}]', b"[1]"])
def test_malformed_entities_are_server_errors(cell: bytes) -> None:
    with pytest.raises(ServerError, match="malformed"):
        codec.parse_entities({ENTITIES.name: np.array([[cell]], dtype=np.object_)}, 1)


def test_classifications_carry_label_score_and_probs() -> None:
    plan = codec.plan_classify_text(["a", "b"])
    probs = np.array([[0.1, 0.9], [0.7, 0.3]], dtype=np.float32)
    labels = np.array([[b"pos"], [b"neg"]], dtype=np.object_)
    result = plan.finish([{PROBS.name: probs, LABEL.name: labels}])
    assert [c.label for c in result] == ["pos", "neg"]
    assert result[0].score == pytest.approx(0.9)
    assert result[0] == Classification("pos", pytest.approx(0.9), probs[0])
    single = codec.plan_classify_text("a").finish([{PROBS.name: probs[:1], LABEL.name: labels[:1]}])
    assert isinstance(single, Classification) and single.label == "pos"


def test_zero_shot_result_picks_the_best_label() -> None:
    plan = codec.plan_zero_shot(_rgb(), ["cat", "dog", "car"])
    result = plan.finish([{PROBS.name: np.array([[0.2, 0.7, 0.1]], dtype=np.float32)}])
    assert isinstance(result, ZeroShotResult)
    assert result.labels == ("cat", "dog", "car") and result.label == "dog"
    assert result.score == pytest.approx(0.7)
    with pytest.raises(ServerError, match="2 probabilities for 3 labels"):
        plan.finish([{PROBS.name: np.array([[0.2, 0.8]], dtype=np.float32)}])


def test_missing_or_misshapen_outputs_are_server_errors() -> None:
    plan = codec.plan_embed_text(["a", "b"])
    with pytest.raises(ServerError, match="no output"):
        plan.finish([{}])
    with pytest.raises(ServerError, match="for 2 items"):
        plan.finish([{EMBEDDING.name: np.zeros((3, 4), dtype=np.float32)}])


def test_results_are_frozen() -> None:
    entity = Entity("a", "B", 0, 1, 0.5)
    with pytest.raises(AttributeError):
        entity.text = "b"  # type: ignore[misc]
    assert not hasattr(entity, "__dict__")  # slots
    assert ModelInfo("m", "1", "READY", "") == ModelInfo("m", "1", "READY", "")


# --- errors -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        ("StatusCode.INVALID_ARGUMENT", "in ensemble 'text_embed', TEXT item 0 is empty", InvalidInputError),
        ("StatusCode.NOT_FOUND", "model 'nope' not found", ModelNotReadyError),
        ("StatusCode.UNAVAILABLE", "Request for unknown model: 'nope' is not found", ModelNotReadyError),
        ("StatusCode.INTERNAL", "Model 'text_embed' version 1 is not ready", ModelNotReadyError),
        (
            "StatusCode.UNAVAILABLE",
            "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
            "Failed to connect to remote host: Connection refused",
            ServerUnavailableError,
        ),
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded", DeadlineExceededError),
        ("StatusCode.INTERNAL", "onnxruntime: something broke", ServerError),
        ("StatusCode.RESOURCE_EXHAUSTED", "too big", ServerError),
        ("StatusCode.RESOURCE_EXHAUSTED", "Sent message larger than max (5760092 vs. 4194304)", InvalidInputError),
        (
            "StatusCode.UNAVAILABLE",
            "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'",
            PermissionDeniedError,
        ),
        ("StatusCode.PERMISSION_DENIED", "no", PermissionDeniedError),
        ("StatusCode.UNAUTHENTICATED", "who are you", PermissionDeniedError),
        (None, "cannot serialize bytes tensor: invalid datatype", ServerError),
    ],
)
def test_triton_errors_map_to_typed_errors(status: str | None, message: str, expected: type) -> None:
    error = from_triton(_exc(status, message), "text_embed")
    assert type(error) is expected
    assert error.server_message == message and message in str(error)
    assert error.pipeline == "text_embed"
    if status is not None:
        assert error.status == status.removeprefix("StatusCode.")
    assert isinstance(error, MmserveError)


def test_error_details() -> None:
    assert status_name("StatusCode.NOT_FOUND") == "NOT_FOUND"
    local = InvalidInputError("pass sample_rate=")
    assert local.status == "INVALID_ARGUMENT" and local.server_message is None
    assert isinstance(local, ValueError)  # also catchable as a ValueError
    mapped = from_triton(_exc("StatusCode.INVALID_ARGUMENT", "TEXT is empty"), "p")
    copy = pickle.loads(pickle.dumps(mapped))
    assert type(copy) is InvalidInputError and copy.server_message == "TEXT is empty"
    assert str(copy) == str(mapped) and copy.pipeline == "p"


def test_readiness_error_explains_what_is_missing() -> None:
    index = [ModelInfo("text_embed", "1", "UNAVAILABLE", "failed to load: bad onnx"), ModelInfo("ok", "1", "READY", "")]
    error = readiness_error("h:1", 5, ["text_embed", "nope"], None, index)
    assert isinstance(error, ModelNotReadyError)
    assert "failed to load: bad onnx" in str(error) and "nope: not in the model repository" in str(error)
    server = readiness_error("h:1", 5, [SERVER], None, index)
    assert "text_embed" in str(server) and "ok" not in str(server).split("within")[1]
    down = from_triton(_exc("StatusCode.UNAVAILABLE", "Connection refused"))
    unreachable = readiness_error("h:1", 5, ["text_embed"], down, None)
    assert isinstance(unreachable, ServerUnavailableError) and "Connection refused" in str(unreachable)


def test_small_transport_helpers() -> None:
    assert normalize_url("grpc://h:8001") == "h:8001"
    with pytest.raises(InvalidInputError, match="8001"):
        normalize_url("http://h:8000")
    assert pipeline_names("text_embed") == ("text_embed",)
    assert pipeline_names(["a", "b"]) == ("a", "b")
    with pytest.raises(InvalidInputError):
        Deadline(0)
    assert Deadline(None).remaining() is None


# --- the client around the pure parts (real gRPC, no server listening) -------------


@pytest.fixture
def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"127.0.0.1:{port}"


def test_client_fails_typed_without_a_server(closed_port_url: str) -> None:
    with Client(closed_port_url, timeout=1.5) as client:
        assert client.ready() is False and client.ready("text_embed") is False
        assert client.embed_text([]).shape == (0, 0)  # no call made
        with pytest.raises(InvalidInputError, match="sample_rate"):
            client.classify_audio(np.zeros(10, dtype=np.float32))  # refused before sending
        with pytest.raises(ServerUnavailableError, match="Connection refused|connect"):
            client.embed_text("hi")
        with pytest.raises(ServerUnavailableError):
            client.classify_text(["x"] * (MAX_BATCH_SIZE + 1))  # the parallel path
        with pytest.raises(ServerUnavailableError, match="not reachable within"):
            client.wait_ready(["text_embed"], timeout=0.6, poll_interval=0.2)


def test_async_client_fails_typed_without_a_server(closed_port_url: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(closed_port_url, timeout=1.5) as client:
            assert await client.ready() is False
            assert await client.classify_text([]) == []
            with pytest.raises(ServerUnavailableError):
                await client.embed_text("hi")
            with pytest.raises(ServerUnavailableError):
                await client.embed_text(["x"] * (MAX_BATCH_SIZE + 1))
            with pytest.raises(ServerUnavailableError, match="not reachable within"):
                await client.wait_ready(timeout=0.6, poll_interval=0.2)

    asyncio.run(scenario())


def test_importing_the_client_does_not_import_torch_or_soundfile() -> None:
    code = (
        "import mmserve.client, sys; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'soundfile' not in sys.modules, 'soundfile imported'; "
        "assert not any(m.startswith(('mmserve.training', 'mmserve.exporters')) for m in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- production pieces: advice, headers, retry arithmetic, shared-memory sizing ----


def test_refusals_and_oversized_messages_say_what_to_pass() -> None:
    admin = from_triton(_exc("StatusCode.UNAVAILABLE", "This protocol is restricted, expecting header 'triton-grpc-protocol-admin-key'"))
    assert "admin_key=" in str(admin)
    api = from_triton(_exc("StatusCode.UNAVAILABLE", "This protocol is restricted, expecting header 'triton-grpc-protocol-api-key'"))
    assert "api_key=" in str(api)
    big = from_triton(_exc("StatusCode.RESOURCE_EXHAUSTED", "Sent message larger than max (9 vs. 4)"), "audio_classify")
    assert "shared_memory='system'" in str(big) and "max_send_message_size" in str(big)
    tls = from_triton(_exc("StatusCode.UNAVAILABLE", "failed to connect: Tls handshake failed (TSI_PROTOCOL_FAILURE)"))
    assert isinstance(tls, ServerCertificateError) and "root_certificates=" in str(tls)
    name = from_triton(_exc("StatusCode.UNAVAILABLE", "ipv4:127.0.0.1:1: Hostname Verification Check failed."))
    assert isinstance(name, ServerNameMismatchError) and "tls_server_name=" in str(name) and "127.0.0.1:1" in str(name)
    assert not isinstance(tls, ServerUnavailableError)  # a certificate to fix, not an outage to wait out


def test_keys_travel_under_both_header_names_and_only_admin_calls_carry_the_admin_key() -> None:
    options = dict(
        ssl=False, root_certificates=None, private_key=None, certificate_chain=None, tls_server_name=None,
        keepalive=None, max_send_message_size=1024, max_receive_message_size=2048, channel_args=[("grpc.lb_policy_name", "pick_first")],
    )
    connection = Connection.build("h:1", api_key="A", admin_key="S", headers={"X-Team": "search"}, **options)
    assert connection.headers == {"x-team": "search", "api-key": "A", "triton-grpc-protocol-api-key": "A"}
    assert connection.admin_headers == {**connection.headers, "admin-key": "S", "triton-grpc-protocol-admin-key": "S"}
    args = dict(connection.channel_args)
    assert args["grpc.max_send_message_length"] == 1024 and args["grpc.max_receive_message_length"] == 2048
    assert args["grpc.keepalive_time_ms"] == 60_000 and args["grpc.max_reconnect_backoff_ms"] == 1000
    assert args["grpc.lb_policy_name"] == "pick_first" and not connection.tls
    bare = Connection.build("h:1", api_key=None, admin_key=None, headers=None, **options)
    assert bare.headers is None and bare.admin_headers is None
    with pytest.raises(InvalidInputError, match="max_send_message_size"):
        Connection.build("h:1", api_key=None, admin_key=None, headers=None, **{**options, "max_send_message_size": 0})


def test_backoff_grows_with_jitter_up_to_its_ceiling() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0, jitter=0.5)
    for retry, ceiling in ((1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.0), (9, 1.0)):
        pauses = [policy.backoff(retry) for _ in range(200)]
        assert all(ceiling * 0.5 <= p <= ceiling for p in pauses)
        assert max(pauses) - min(pauses) > ceiling * 0.1  # jittered, not constant
    assert RetryPolicy(jitter=0).backoff(2) == pytest.approx(0.2)


def test_the_retry_budget_is_a_token_bucket() -> None:
    empty = RetryBudget(capacity=2, per_second=0)
    assert [empty.take() for _ in range(3)] == [True, True, False]
    refilled = RetryBudget(capacity=1, per_second=50)
    assert refilled.take() and not refilled.take()
    time.sleep(0.1)  # 5 tokens' worth of time, capped at the capacity of 1
    assert refilled.take() and not refilled.take()


def test_attempts_retry_only_unavailable_and_give_up_typed() -> None:
    down = from_triton(_exc("StatusCode.UNAVAILABLE", "failed to connect to all addresses"))
    attempts = Attempts(RetryPolicy(max_attempts=3, initial_backoff=0.01), None, Deadline(None), "h:1")
    assert attempts.after(down) > 0 and attempts.after(down) > 0
    with pytest.raises(ServerUnavailableError, match=r"after 3 attempt\(s\)"):
        attempts.after(down)
    for never in (
        from_triton(_exc("StatusCode.INVALID_ARGUMENT", "TEXT[0] is empty")),
        from_triton(_exc("StatusCode.UNAVAILABLE", "This protocol is restricted, expecting header 'x'")),
        from_triton(_exc("StatusCode.UNAVAILABLE", "Tls handshake failed")),
        from_triton(_exc("StatusCode.NOT_FOUND", "model 'x' not found")),
    ):
        with pytest.raises(type(never)):
            Attempts(RetryPolicy(), None, Deadline(None), "h:1").after(never)
    short = Attempts(RetryPolicy(initial_backoff=5.0, max_backoff=5.0), None, Deadline(1.0), "h:1")
    with pytest.raises(ServerUnavailableError, match="deadline"):
        short.after(down)
    lost = Resend(from_triton(_exc("StatusCode.NOT_FOUND", "Unable to find system shared memory region: 'r'")))
    once = Attempts(None, None, Deadline(None), "h:1")
    assert once.after(lost) == 0.0  # sent again at once, even without a retry policy
    with pytest.raises(ModelNotReadyError):
        once.after(lost)  # but only once


def test_version_pinning_keeps_the_rest_of_the_config() -> None:
    config = {"config": {"name": "m", "max_batch_size": 8, "version_policy": {"latest": {"num_versions": 1}}}}
    pinned = json.loads(pin_version(config, 2))
    assert pinned == {"name": "m", "max_batch_size": 8, "version_policy": {"specific": {"versions": [2]}}}
    for bad in (0, -1, True, "2"):
        with pytest.raises(InvalidInputError):
            pin_version(config, bad)  # type: ignore[arg-type]
