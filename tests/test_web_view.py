"""The operator web view (``icmh-web``) in headless Chromium, in front of a real cloud and a real edge.

One module-scoped setup: a cloud server with a viewer, an inspector and an admin operator, the web gateway on
loopback, Debian's chromium driven by Playwright; the edge starts streaming once a browser tab subscribed, so
its detections arrive live. The browser logs in with each token, sees the camera and its detections, inspects
a frame in machine / human / original quality, and is refused human quality and rate changes as a viewer, by
the cloud. Screenshots go to ``$ICMH_ARTIFACTS`` (default ``test-artifacts/``) ``/web/``.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import httpx
import pytest
from service_support import (
    OPERATOR_TOKEN,
    edge_settings,
    frame_ids,
    make_tls_files,
    start_cloud,
    start_edge,
    wait_for,
)

from icmh.cloud.auth import OperatorRegistry
from icmh.cloud.server import CloudServer
from icmh.cloud.web import cli as web_cli
from icmh.cloud.web.app import CloudTarget
from icmh.cloud.web.cli import WebServer, bind
from icmh.codec.weights import LAYER_FILES, SHIPPED_DIR
from icmh.edge.node import EdgeNode
from icmh.rpc import operator_pb2, operator_pb2_grpc
from icmh.service.grpc_setup import channel_options, with_token
from icmh.service.images import decode_png

if TYPE_CHECKING:
    from playwright import sync_api

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("ICMH_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
ARTIFACTS = Path(os.environ.get("ICMH_ARTIFACTS", ROOT / "test-artifacts")) / "web"
CAMERA, CAMERA_TOKEN = "cam-web", "cam-web-token"
TOKENS = {"viewer": "viewer-web-token", "inspector": "inspector-web-token", "admin": "admin-web-token"}
FRAMES = 4
SIZE = (640, 360)  # larger than the other service tests: the screenshots show the frames
TIMEOUT_MS = 60_000

@dataclass
class Site:
    cloud: CloudServer
    web: WebServer
    edge: EdgeNode
    browser: sync_api.Browser
    live: sync_api.Page  # the inspector's tab that watched the detections arrive

    @property
    def url(self) -> str:
        return self.web.url

    def operator(self, role: str = "admin") -> operator_pb2_grpc.OperatorStub:
        channel = grpc.insecure_channel(f"127.0.0.1:{self.cloud.port}", options=channel_options())
        return operator_pb2_grpc.OperatorStub(with_token(channel, TOKENS[role]))

    def new_page(self) -> sync_api.Page:
        page = self.browser.new_page(viewport={"width": 1360, "height": 1000})
        page.set_default_timeout(TIMEOUT_MS)
        return page


def weights_dir(tiny_weights: Path) -> Path:
    """The shipped weights (real pictures in the screenshots), else the tiny random ones."""
    return SHIPPED_DIR if all((SHIPPED_DIR / LAYER_FILES[k]).exists() for k in ("base", "pr")) else tiny_weights


def log_in(page: sync_api.Page, url: str, token: str) -> None:
    """Open the page in a fresh session and log in; waits for the camera row."""
    page.goto(url)
    page.evaluate("sessionStorage.clear()")
    page.reload()
    page.fill("#token", token)
    page.click("#login-form button")
    page.wait_for_selector(f'#cameras tr[data-camera="{CAMERA}"]')


def screenshot(page: sync_api.Page, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    return path


def open_frame(page: sync_api.Page, frame_id: int) -> None:
    page.wait_for_selector(f'#timeline .frame[data-frame="{frame_id}"]').click()
    page.wait_for_selector("#inspect-panel:not([hidden])")


def pane_done(page: sync_api.Page, index: int) -> sync_api.Locator:
    pane = page.locator(f'.pane[data-pane="{index}"]')
    page.wait_for_function(
        "i => ['ok', 'error'].includes(document.querySelector(`.pane[data-pane=\"${i}\"]`).dataset.state)", arg=index)
    return pane


def shown_png(pane: sync_api.Locator) -> bytes:
    src = pane.locator("img").get_attribute("src")
    assert src and src.startswith("data:image/png;base64,")
    return base64.b64decode(src.split(",", 1)[1])


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path, shared_dir: Path) -> Iterator[Site]:
    if not CHROMIUM.is_file():
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)")
    playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (.[dev])")
    tmp = tmp_path_factory.mktemp("web")
    weights = weights_dir(tiny_weights)
    cloud = start_cloud(tmp, weights, shared_dir, {CAMERA: CAMERA_TOKEN}, operators=OperatorRegistry.load(
        None, [f"{role}-op={token}:{role}" for role, token in TOKENS.items()]))
    web = WebServer(CloudTarget(f"127.0.0.1:{cloud.port}"), bind("127.0.0.1", 0), log_level="warning").start()
    playwright = playwright_api.sync_playwright().start()
    browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    edge = None
    try:
        site = Site(cloud, web, None, browser, None)  # type: ignore[arg-type]
        site.live = site.new_page()
        log_in(site.live, site.url, TOKENS["inspector"])
        wait_for(lambda: cloud.hub.count == 1, what="the browser's subscription to reach the cloud")
        site.live.wait_for_selector("#feed-status:has-text('subscribed')")
        edge = site.edge = start_edge(edge_settings(tmp / "edge", CAMERA, CAMERA_TOKEN, cloud.port, shared_dir,
                                                    weights, max_frames=FRAMES, fps=4.0, residual_policy="eager",
                                                    size=SIZE))
        wait_for(lambda: len(frame_ids(cloud.settings.detections_jsonl, CAMERA)) == FRAMES, timeout=120,
                 what=f"{FRAMES} detection results")
        yield site
    finally:
        browser.close()
        playwright.stop()
        web.stop()
        if edge is not None:
            edge.close()
        cloud.stop(grace=1)


@pytest.mark.slow
def test_live_detections_arrive_in_the_browser(site: Site) -> None:
    page = site.live
    page.wait_for_function("n => document.querySelectorAll('#feed li').length >= n", arg=FRAMES)
    shown = sorted(int(x) for x in page.locator("#feed li").evaluate_all("items => items.map(i => i.dataset.frame)"))
    assert shown == frame_ids(site.cloud.settings.detections_jsonl, CAMERA)  # every published result, once
    # the live view drew the newest frame in machine quality, with the detections the cloud stored for it
    page.wait_for_function("n => document.querySelector('#live-canvas').dataset.frame === String(n)", arg=FRAMES)
    reply = site.operator("inspector").GetFrame(operator_pb2.GetFrameRequest(
        camera_id=CAMERA, frame_id=FRAMES, quality=operator_pb2.QUALITY_MACHINE), timeout=30)
    count = len(reply.detections)
    assert f"#{FRAMES} · machine quality · {count} detection{'' if count == 1 else 's'}" in page.inner_text(
        "#live-caption")
    assert page.evaluate("document.querySelector('#live-canvas').width") == reply.frame.width

    page.wait_for_function("([c, n]) => document.querySelector(`#cameras tr[data-camera='${c}']`)"
                           ".children[5].innerText === String(n)", arg=[CAMERA, FRAMES])  # stored, after a refresh
    row = page.locator(f'#cameras tr[data-camera="{CAMERA}"]')
    assert row.locator("td").nth(1).inner_text() == "online"
    frames = site.operator("viewer").ListFrames(operator_pb2.ListFramesRequest(camera_id=CAMERA), timeout=30).frames
    base = sum(f.base_bpp for f in frames) / len(frames)
    residual = sum(8 * f.residual_bytes / (f.width * f.height) for f in frames) / len(frames)
    assert row.locator("td.bpp-base").inner_text() == f"{base:.4f}"
    assert row.locator("td.bpp-residual").inner_text() == f"{residual:.4f}"
    screenshot(page, "live.png")


@pytest.mark.slow
def test_inspector_opens_a_frame_in_human_and_original_quality(site: Site) -> None:
    page = site.new_page()
    try:
        log_in(page, site.url, TOKENS["inspector"])
        frame_id = FRAMES - 1
        open_frame(page, frame_id)
        machine, human = pane_done(page, 0), pane_done(page, 1)
        assert machine.get_attribute("data-state") == "ok" and human.get_attribute("data-state") == "ok"
        reply = site.operator("inspector").GetFrame(operator_pb2.GetFrameRequest(
            camera_id=CAMERA, frame_id=frame_id, quality=operator_pb2.QUALITY_HUMAN), timeout=30)
        assert (decode_png(shown_png(human)) == decode_png(reply.png)).all()  # the cloud's human-quality pixels
        info = human.locator(".info").inner_text()
        assert reply.residual_bytes > 0
        assert f"residual {reply.residual_bytes} B ({reply.residual_bpp:.4f} bpp, R {reply.residual_rate:.2f})" in info
        assert f"base {reply.base_bytes} B" in info and re.search(r"inspection \d+ ms at the cloud", info)
        assert human.locator(".info").inner_text().startswith("human")
        screenshot(page, "inspect-human.png")

        human.locator("select.quality").select_option("human-sharpest")  # the residual at rate 1, coded for this view
        page.wait_for_function("() => document.querySelector('.pane[data-pane=\"1\"] .info').textContent"
                               ".includes('R 1.00')")
        sharp = site.operator("inspector").GetFrame(operator_pb2.GetFrameRequest(
            camera_id=CAMERA, frame_id=frame_id, quality=operator_pb2.QUALITY_HUMAN, residual_rate=1.0), timeout=30)
        assert sharp.residual_rate == 1.0 and (decode_png(shown_png(pane_done(page, 1))) == decode_png(sharp.png)).all()
        screenshot(page, "inspect-human-sharpest.png")

        machine.locator("select.quality").select_option("original")
        pane_done(page, 0)
        page.wait_for_function("() => document.querySelector('.pane[data-pane=\"0\"]').dataset.quality === 'original'")
        assert re.search(r"lossless \d+ B", machine.locator(".info").inner_text())

        page.select_option("#compare-mode", "slider")
        page.wait_for_selector("#slider-view:not([hidden])")
        assert page.locator("#slider-right").get_attribute("src") == human.locator("img").get_attribute("src")
        page.fill("#slider", "30")
        page.dispatch_event("#slider", "input")
        assert "30%" in page.evaluate("document.querySelector('#slider-right').style.clipPath")
        screenshot(page, "inspect-slider.png")
    finally:
        page.close()


@pytest.mark.slow
def test_viewer_is_refused_human_quality_and_rates_by_the_cloud(site: Site) -> None:
    page = site.new_page()
    try:
        log_in(page, site.url, TOKENS["viewer"])
        open_frame(page, 2)
        machine, human = pane_done(page, 0), pane_done(page, 1)
        assert machine.get_attribute("data-state") == "ok"  # machine quality: allowed
        assert human.get_attribute("data-state") == "error"
        assert "PERMISSION_DENIED" in human.locator(".error").inner_text()
        assert human.locator("img").get_attribute("src") is None
        screenshot(page, "viewer-refused.png")
        page.fill("#base-rate", "0.2")
        page.click("#rates-form button")
        page.wait_for_selector("#rates-result.error")
        assert "PERMISSION_DENIED" in page.inner_text("#rates-result")
    finally:
        page.close()
    # the refusal was the cloud's: it is in the audit log under the viewer's name
    records = site.operator("admin").ListAudit(operator_pb2.ListAuditRequest(operator="viewer-op"), timeout=30).records
    assert [(r.frame_id, r.quality, r.outcome) for r in records] == [(2, operator_pb2.QUALITY_HUMAN, "denied")]


@pytest.mark.slow
def test_admin_changes_the_rates(site: Site) -> None:
    page = site.new_page()
    try:
        log_in(page, site.url, TOKENS["admin"])
        page.fill("#base-rate", "0.3")
        page.fill("#residual-rate", "0.6")
        page.click("#rates-form button")
        page.wait_for_selector("#rates-result.ok")
        assert "sent to the edge" in page.inner_text("#rates-result")
    finally:
        page.close()
    camera, = site.operator("viewer").ListCameras(operator_pb2.ListCamerasRequest(), timeout=30).cameras
    assert camera.config.base_rate == pytest.approx(0.3) and camera.config.residual_rate == pytest.approx(0.6)


@pytest.mark.slow
def test_wrong_token_is_refused_and_closing_the_tab_ends_the_subscription(site: Site) -> None:
    wait_for(lambda: site.cloud.hub.count == 1, what="the earlier tabs' subscriptions to end")  # the live tab's
    page = site.new_page()
    try:
        page.goto(site.url)
        page.fill("#token", "not-a-token")
        page.click("#login-form button")
        page.wait_for_selector("#login-error:has-text('UNAUTHENTICATED')")
        assert page.locator("#main").is_hidden()
        log_in(page, site.url, TOKENS["viewer"])
        wait_for(lambda: site.cloud.hub.count == 2, what="the second tab's subscription")
        page.click("#logout")
        wait_for(lambda: site.cloud.hub.count == 1, what="the gateway to cancel the logged-out tab's subscription")
    finally:
        page.close()


@pytest.mark.slow
def test_api_refusals_and_bad_input(site: Site) -> None:
    refusals = ("icmh_cloud_auth_refusals_total", {"code": "unauthenticated"})
    before = site.cloud.metrics.registry.get_sample_value(*refusals) or 0.0
    bearer = {"Authorization": f"Bearer {TOKENS['admin']}"}
    with httpx.Client(base_url=site.url, timeout=30) as client:
        anonymous = client.get("/api/cameras")
        assert anonymous.status_code == 401 and anonymous.json()["error"] == "UNAUTHENTICATED"
        assert (site.cloud.metrics.registry.get_sample_value(*refusals) or 0.0) == before  # never forwarded
        wrong = client.get("/api/cameras", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "unknown operator token" in wrong.json()["detail"]
        cases = {
            "/api/frame?camera=cam-web&frame=1&quality=best": 400,
            "/api/frame?camera=cam-web&frame=abc": 400,
            "/api/frame?frame=1": 400,
            "/api/frames?camera=cam-web&limit=0": 400,
            "/api/frame?camera=cam-web&frame=9999": 404,
            "/api/detections?camera=cam-web&min_confidence=x": 400,
            "/api/detections?camera=cam-web&min_confidence=nan": 400,
            "/api/frames?camera=cam-web&max_frame=-1": 400,
        }
        for path, status in cases.items():
            reply = client.get(path, headers=bearer)
            assert reply.status_code == status, (path, reply.text)
            assert reply.json()["error"] and reply.headers["cache-control"] == "no-store"
        page_of_frames = client.get(f"/api/frames?camera={CAMERA}&max_frame=2&limit=5", headers=bearer).json()
        assert [f["frame_id"] for f in page_of_frames["frames"]] == [2, 1]
        for body in ({"camera": CAMERA, "base_rate": "0.5"}, {"camera": CAMERA, "base_rate": 2},
                     {"camera": CAMERA, "speed": 1}, {"camera": CAMERA}, {"base_rate": 0.5}, [1]):
            reply = client.post("/api/config", json=body, headers=bearer)
            assert reply.status_code == 400, (body, reply.text)
        assert client.post("/api/config", content=b"{" * 20000, headers=bearer).status_code == 413
        camera, = site.operator("viewer").ListCameras(operator_pb2.ListCamerasRequest(), timeout=30).cameras
        assert camera.config.base_rate != 2  # nothing changed
        page = client.get("/")
        assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]



@pytest.mark.slow
def test_icmh_web_over_https_to_a_tls_cloud_exits_0_on_sigterm(tmp_path: Path, tiny_weights: Path,
                                                                shared_dir: Path) -> None:
    """The real ``icmh-web`` process: HTTPS to the browser, TLS to the cloud (``--tls-ca``); plain gRPC to a TLS
    cloud fails clearly."""
    tls = make_tls_files(tmp_path / "tls")
    cloud = start_cloud(tmp_path, tiny_weights, shared_dir, {CAMERA: CAMERA_TOKEN}, tls_cert=tls["server_cert"],
                        tls_key=tls["server_key"])
    bearer = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    ready = tmp_path / "web.port"
    process = subprocess.Popen([sys.executable, "-m", "icmh.cloud.web", "--cloud", f"127.0.0.1:{cloud.port}",
                                "--tls-ca", str(tls["ca"]), "--https-cert", str(tls["server_cert"]),
                                "--https-key", str(tls["server_key"]), "--listen", "127.0.0.1:0",
                                "--ready-file", str(ready), "--log-level", "warning"], cwd=ROOT)
    try:
        wait_for(lambda: ready.is_file() and ready.read_text().endswith("\n") or process.poll() is not None,
                 what="icmh-web to serve")
        assert process.poll() is None
        reply = httpx.get(f"https://127.0.0.1:{int(ready.read_text())}/api/cameras", headers=bearer, timeout=30,
                          verify=ssl.create_default_context(cafile=tls["ca"]))
        assert reply.status_code == 200 and [c["camera_id"] for c in reply.json()["cameras"]] == [CAMERA]
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
        plain = WebServer(CloudTarget(f"127.0.0.1:{cloud.port}", timeout_s=5), bind("127.0.0.1", 0),
                          log_level="warning").start()
        try:
            reply = httpx.get(plain.url + "api/cameras", headers=bearer, timeout=30)
            assert reply.status_code in (503, 504) and reply.json()["error"] in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        finally:
            plain.stop()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        cloud.stop(grace=1)


@pytest.mark.parametrize(("argv", "message"), [
    (["--listen", "0.0.0.0:0"], "reachable from other machines"),
    (["--listen", "no-port"], "HOST:PORT"),
    (["--https-cert", "web.pem"], "both --https-cert and --https-key"),
    (["--tls-cert", "client.pem"], "both --tls-cert and --tls-key"),
    (["--tls-server-name", "cloud.example"], "needs TLS"),
    (["--tls-ca", "/nonexistent/ca.pem"], "file not found"),
])
def test_icmh_web_refuses_bad_settings(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert web_cli.main(argv) == 2
    assert message in capsys.readouterr().err


def test_icmh_web_reports_a_port_in_use(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        assert web_cli.main(["--listen", f"127.0.0.1:{taken.getsockname()[1]}"]) == 2
    assert "cannot listen on" in capsys.readouterr().err
