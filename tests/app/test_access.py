"""Who may use the app and which server files its page reads: any path on loopback, only paths under
``--root`` (one message for outside and missing) or none when served beyond this machine; logins; the
start-up warning. And the page's first state: the first built-in scene, its mask and path, ready."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest

from interdyn.app.access import ServerFiles, exposure_warning, is_loopback, read_auth
from interdyn.app.main import app_main
from interdyn.app.scenes import builtin_scenes
from interdyn.errors import InputError

# gradio is imported by the tests that use it, not at collection (seconds on every test worker)
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("gradio") is None,
    reason="the app's extra is not installed (pip install -e '.[app]')",
)


@pytest.mark.parametrize(
    "host, loopback",
    [("127.0.0.1", True), ("127.0.0.2", True), ("localhost", True), ("::1", True), ("[::1]", True),
     ("0.0.0.0", False), ("::", False), ("192.168.1.5", False), ("myhost.lab", False)],
)  # fmt: skip
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_paths_on_loopback_are_the_users_own(tmp_path):
    files = ServerFiles.for_host("127.0.0.1")
    (tmp_path / "a.png").write_bytes(b"x")
    assert files.enabled and files.resolve(str(tmp_path / "a.png")) == tmp_path / "a.png"
    with pytest.raises(InputError, match="does not exist"):
        files.resolve(str(tmp_path / "b.png"))


@pytest.mark.parametrize("host, share", [("0.0.0.0", False), ("127.0.0.1", True)])
def test_served_beyond_this_machine_reads_no_server_path(host, share, tmp_path):
    files = ServerFiles.for_host(host, share)
    (tmp_path / "a.png").write_bytes(b"x")
    assert not files.enabled and "paths on the server are off" in files.describe()
    for text in (str(tmp_path / "a.png"), "/etc/passwd", str(tmp_path / "missing.png")):
        with pytest.raises(InputError, match="reading files on the server is off"):
            files.resolve(text)


def test_a_root_allows_its_folder_only_and_tells_nothing_else(tmp_path):
    root = tmp_path / "shared"
    (root / "clips").mkdir(parents=True)
    (root / "clips" / "a.png").write_bytes(b"x")
    (tmp_path / "secret.png").write_bytes(b"x")
    os.symlink(tmp_path / "secret.png", root / "link.png")  # a link out of the root
    files = ServerFiles.for_host("0.0.0.0", root=root)
    assert files.resolve("clips/a.png") == (root / "clips" / "a.png").resolve()
    assert files.resolve(str(root / "clips" / "a.png")) == (root / "clips" / "a.png").resolve()
    messages = set()
    for text in (str(tmp_path / "secret.png"), "../secret.png", "link.png", "clips/missing.png", "/etc"):
        with pytest.raises(InputError) as caught:
            files.resolve(text)
        messages.add(str(caught.value).replace(text, "<path>"))
    assert messages == {"there is no image, video or clip folder '<path>' under the app's root folder."}
    with pytest.raises(InputError, match="is not a folder"):
        ServerFiles.for_host("0.0.0.0", root=tmp_path / "secret.png")


def test_logins(tmp_path):
    assert read_auth(None, None) is None
    assert read_auth("alice:s3:cret", None) == [("alice", "s3:cret")]
    logins = tmp_path / "logins"
    logins.write_text("# lab\nbob:pw1\n\ncarol:pw2\n")
    assert read_auth("alice:x", str(logins)) == [("alice", "x"), ("bob", "pw1"), ("carol", "pw2")]
    for bad in ("alice", "alice:", ":pw"):
        with pytest.raises(InputError, match="must be user:password"):
            read_auth(bad, None)
    with pytest.raises(InputError, match="cannot read --auth_file"):
        read_auth(None, str(tmp_path / "none"))


def test_the_warning_at_start(tmp_path):
    closed, rooted = ServerFiles.for_host("0.0.0.0"), ServerFiles.for_host("0.0.0.0", root=tmp_path)
    assert exposure_warning("127.0.0.1", 7860, False, ServerFiles(), False) is None
    text = exposure_warning("0.0.0.0", 7860, False, closed, False)
    assert text.startswith("interdyn app: warning: the app is served on 0.0.0.0:7860")
    assert "without a login (add --auth user:password)" in text and "no server files can be read" in text
    text = exposure_warning("127.0.0.1", 7860, True, rooted, True)
    assert "public Gradio share link" in text and "with the login of --auth" in text and str(tmp_path) in text


def test_bad_root_or_login_is_one_sentence_before_serving(tmp_path, capsys):
    assert app_main(["--host", "0.0.0.0", "--root", str(tmp_path / "none"), "--out", str(tmp_path)]) == 2
    assert (
        capsys.readouterr().err.strip()
        == f"interdyn app: error: --root '{tmp_path / 'none'}' is not a folder."
    )
    assert app_main(["--auth", "alice", "--out", str(tmp_path)]) == 2
    assert "--auth must be user:password" in capsys.readouterr().err


# ---------------------------------------------------------------------------- the page's first state
def test_the_page_opens_on_the_first_scene_ready_to_generate(tmp_path):
    from interdyn.app.engine import Engine
    from interdyn.app.ui import build_ui, driver_of, editor_value, on_editor_change

    scene = builtin_scenes()[0]
    demo = build_ui(Engine(tmp_path, device="cpu"))
    by_id = {block.elem_id: block for block in demo.blocks.values() if getattr(block, "elem_id", None)}
    assert by_id["scene"].value == scene.name
    shown = by_id["editor"].value
    assert shown["background"] is not None and len(shown["layers"]) == 1
    assert by_id["path_canvas"].value is not None
    import gradio as gr

    states = [b for b in demo.blocks.values() if isinstance(b, gr.State)]
    assert any(s.value == [list(p) for p in scene.points] for s in states)

    # The editor reports a scene it was given with an empty layer (it shows only strokes): the scene's
    # mask stays the driver until something is painted; painting replaces it; another image clears all.
    value = editor_value(scene.image, scene.mask)
    frame = (scene.image, scene.mask, scene.mask)
    loaded = {**value, "layers": [np.zeros((*scene.mask.shape, 4), np.uint8)]}
    frame, points, canvas = on_editor_change(loaded, [list(p) for p in scene.points], frame)
    assert np.array_equal(frame[1], scene.mask) and points == [list(p) for p in scene.points]
    driver = driver_of(loaded, frame, "path", points, 0, None)
    assert np.array_equal(driver.masks[0], scene.mask)
    stroke = np.zeros((*scene.mask.shape, 4), np.uint8)
    stroke[10:20, 10:20, 3] = 255
    frame, points, _ = on_editor_change({**value, "layers": [stroke]}, points, frame)
    assert frame[1].sum() == 100 and frame[2] is None and len(points) == 2
    other = np.zeros_like(scene.image)
    frame, points, _ = on_editor_change(editor_value(other), points, frame)
    assert points == [] and not frame[1].any()


def test_a_path_under_the_root_loads_in_the_page(tmp_path):
    from PIL import Image

    from interdyn.app.ui import server_path_callback

    root = tmp_path / "shared"
    root.mkdir()
    Image.fromarray(np.full((32, 48, 3), 120, np.uint8)).save(root / "frame.png")
    load = server_path_callback(ServerFiles.for_host("0.0.0.0", root=root))
    value, points = load("frame.png", [[1, 2]])
    assert value["background"].shape == (32, 48, 3) and points == []
    import gradio as gr

    with pytest.raises(gr.Error, match="under the app's root folder"):
        load(str(Path("/etc/hostname")), [])
