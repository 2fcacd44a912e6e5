// Play an HLS URL with hls.js (or a DASH .mpd URL with dash.js) in headless Chromium and report
// what a viewer would see.
//
//   node tests/players/play.mjs URL SECONDS
//
// Prints ONE JSON line and exits 0 when the harness itself worked (whether or not the
// stream played: the caller judges the result); exits 2 when Chromium could not be run.
//
// The harness page is served by page.route() on the stream's own origin, so hls.js
// fetches same-origin (no CORS, no private-network preflight) and nothing else has to
// listen. hls.js and dash.js come from node_modules, not a CDN.
//
// Result fields:
//   started        a 'playing' event happened
//   startupSeconds from loadSource() to the first 'playing'
//   playedSeconds  media time actually played (sum of video.played ranges)
//   stalls         'waiting' events after the first 'playing', with when and where
//   errors         every hls.js ERROR event (fatal or not) with type/details; dash.js ERROR events
//   player         "hls.js" or "dash.js", chosen by the URL (a path ending in .mpd is DASH)
//   currentTime    video.currentTime at the end
//   mse            MediaSource.isTypeSupported for the H.264/AAC codecs we serve
//   console        page console errors
//   frags          every media segment loaded: when, from which host (HLS: and pathway; low latency: each part)
//   steering       HLS: every steering manifest loaded: when, and its PATHWAY-PRIORITY
//   actionAt       when LIVECDN_ACTION ran (see below); stalls carry `until` once playback resumed
//   bufferAheadAtAction  seconds of media buffered ahead of the playhead just before the action ran
//
// Env: LIVECDN_ACTION, a shell command run LIVECDN_ACTION_AFTER seconds (default 10) after playback
// started (a test kills or stops an edge with it, timed on the page's own clock). With
// LIVECDN_ACTION_STEERING_PHASE=S (hls.js), it runs S seconds after the next steering manifest load
// after that: where in the steering TTL the edge fails is then the caller's choice, not chance.
//
//   latency        hls.js only: its live latency (seconds behind the playlist's live edge), sampled
//                  every second after startup: { mean, last, samples }
//
// Env: CHROMIUM (default /usr/bin/chromium); LIVECDN_HOST_RESOLVER_RULES, passed to
// --host-resolver-rules so a CDN host name can be mapped to loopback; LIVECDN_LOW_LATENCY=1
// plays with hls.js lowLatencyMode (parts, blocking reloads, preload hints).

import { chromium } from 'playwright-core';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createRequire } from 'node:module';
import { execSync } from 'node:child_process';

const here = dirname(fileURLToPath(import.meta.url));
const require = createRequire(import.meta.url);

const [url, secondsArg] = process.argv.slice(2);
const lowLatency = process.env.LIVECDN_LOW_LATENCY === '1';
const seconds = Number(secondsArg ?? 20);
if (!url || !(seconds > 0)) {
  console.error('usage: node play.mjs URL SECONDS');
  process.exit(64);
}
const START_TIMEOUT_MS = 30_000;
const CODECS = 'video/mp4; codecs="avc1.42c01f,mp4a.40.2"';

const dash = new URL(url).pathname.endsWith('.mpd');
const player = dash ? 'dash.js' : 'hls.js';
const pkg = dash ? 'dashjs' : 'hls.js';
const playerJs = readFileSync(require.resolve(dash ? 'dashjs/dist/dash.all.min.js' : 'hls.js/dist/hls.min.js'));
const playerVersion = JSON.parse(readFileSync(join(here, 'node_modules', pkg, 'package.json'))).version;

const base = new URL('/__livecdn_player__/', url).href;
const page_html = `<!doctype html><meta charset="utf-8"><title>livecdn player</title>
<video id="v" muted playsinline></video>
<script src="${base}player.js"></script>`;

const args = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-dev-shm-usage', '--autoplay-policy=no-user-gesture-required', '--mute-audio',
];
if (process.env.LIVECDN_HOST_RESOLVER_RULES) {
  args.push(`--host-resolver-rules=${process.env.LIVECDN_HOST_RESOLVER_RULES}`);
}

const userDataDir = mkdtempSync(join(tmpdir(), 'livecdn-chromium-'));
let context;
const result = { url, seconds, player, [dash ? 'dashVersion' : 'hlsVersion']: playerVersion, started: false, playedSeconds: 0, stalls: [], errors: [],
                 currentTime: null, console: [] };
try {
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args,
    timeout: 60_000,
  });
} catch (e) {
  console.log(JSON.stringify({ ...result, harnessError: `cannot launch Chromium: ${e.message}` }));
  rmSync(userDataDir, { recursive: true, force: true });
  process.exit(2);
}

try {
  const page = context.pages()[0] ?? await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error') result.console.push(m.text()); });
  page.on('pageerror', (e) => result.console.push(`pageerror: ${e.message}`));
  await page.route(`${base}**`, (route) => {
    const u = new URL(route.request().url());
    if (u.pathname.endsWith('/player.js')) {
      return route.fulfill({ status: 200, contentType: 'text/javascript', body: playerJs });
    }
    return route.fulfill({ status: 200, contentType: 'text/html', body: page_html });
  });
  const action = process.env.LIVECDN_ACTION || null;
  const actionAfter = Number(process.env.LIVECDN_ACTION_AFTER ?? 10);
  const actionPhase = process.env.LIVECDN_ACTION_STEERING_PHASE ? Number(process.env.LIVECDN_ACTION_STEERING_PHASE)
                                                                : null;
  if (action) await page.exposeFunction('livecdnAction', () => { execSync(action, { stdio: 'inherit' }); });
  await page.goto(`${base}index.html`);
  const out = await page.evaluate(async ({ url, seconds, startTimeoutMs, codecs, dash, action, actionAfter, actionPhase,
                                            lowLatency }) => {
    const r = { started: false, startupSeconds: null, stalls: [], errors: [], frags: [], steering: [],
                mse: typeof MediaSource !== 'undefined' && MediaSource.isTypeSupported(codecs) };
    if (dash) r.dashSupported = dashjs.supportsMediaSource();
    else r.hlsSupported = Hls.isSupported();
    if (!(r.dashSupported ?? r.hlsSupported)) return r;
    const video = document.getElementById('v');
    const t0 = performance.now();
    let hls = null;
    let onSteering = null;  // resolves the wait for the next steering manifest (LIVECDN_ACTION_STEERING_PHASE)
    let dashPlayer = null;
    if (dash) {
      dashPlayer = dashjs.MediaPlayer().create();
      // Three segments behind live, as hls.js by default (liveSyncDurationCount): ffmpeg's
      // suggestedPresentationDelay is one segment, which leaves no margin and stalls even at the origin.
      dashPlayer.updateSettings({ streaming: { delay: { liveDelayFragmentCount: 3,
                                                        useSuggestedPresentationDelay: false } } });
      dashPlayer.on(dashjs.MediaPlayer.events.FRAGMENT_LOADING_COMPLETED, (e) => {
        const req = e.request;
        if (req && req.type === 'MediaSegment' && req.url) {
          r.frags.push({ at: (performance.now() - t0) / 1000, host: new URL(req.url).host,
                         pathway: req.serviceLocation ?? null, ok: !e.error });
        }
      });
      dashPlayer.on(dashjs.MediaPlayer.events.ERROR, (e) => {
        r.errors.push({ fatal: true, type: 'dash', details: e.error?.message ?? String(e.error),
                        code: e.error?.code ?? null, at: (performance.now() - t0) / 1000 });
      });
    } else {
      hls = new Hls({ enableWorker: true, lowLatencyMode: lowLatency });
      hls.on(Hls.Events.ERROR, (_e, d) => {
        r.errors.push({ fatal: d.fatal, type: d.type, details: d.details,
                        url: d.frag?.url ?? d.context?.url ?? d.url ?? null,
                        response: d.response ? { code: d.response.code, text: d.response.text } : null,
                        error: d.error ? String(d.error) : null,
                        at: (performance.now() - t0) / 1000 });
      });
      hls.on(Hls.Events.FRAG_LOADED, (_e, d) => {
        // A low-latency part (d.part) of a segment still being made: the segment has no URL yet (new URL('')
        // threw here, which hls.js reported as its own internalException).
        const loaded = d.part?.url || d.frag.url;
        r.frags.push({ at: (performance.now() - t0) / 1000, host: loaded ? new URL(loaded).host : null,
                       sn: d.frag.sn, part: d.part?.index ?? null, pathway: hls.levels[d.frag.level]?.pathwayId ?? null });
      });
      hls.on(Hls.Events.STEERING_MANIFEST_LOADED, (_e, d) => {
        r.steering.push({ at: (performance.now() - t0) / 1000,
                          priority: d.steeringManifest['PATHWAY-PRIORITY'] ?? null, ttl: d.steeringManifest.TTL });
        if (onSteering) onSteering();
      });
      hls.on(Hls.Events.MANIFEST_PARSED, () => { video.play().catch((e) => r.errors.push(
        { fatal: true, type: 'play', details: String(e) })); });
    }
    let playing;
    const started = new Promise((resolve) => { playing = resolve; });
    video.addEventListener('playing', () => {
      const last = r.stalls[r.stalls.length - 1];
      if (last && last.until === undefined) last.until = (performance.now() - t0) / 1000;
      if (!r.started) {
        r.started = true;
        r.startupSeconds = (performance.now() - t0) / 1000;
        playing();
      }
    });
    video.addEventListener('waiting', () => {
      if (r.started) {
        r.stalls.push({ at: (performance.now() - t0) / 1000, currentTime: video.currentTime,
                        buffered: video.buffered.length ? video.buffered.end(video.buffered.length - 1) : null });
      }
    });
    if (dash) {
      dashPlayer.initialize(video, url, true);
    } else {
      hls.loadSource(url);
      hls.attachMedia(video);
    }
    const sleep = (ms) => new Promise((res) => setTimeout(res, ms));
    await Promise.race([started, sleep(startTimeoutMs)]);
    const latencies = [];
    const watch = async (secs) => {  // sleeps, sampling hls.js's live latency each second
      for (let left = secs; left > 0; left -= 1) {
        await sleep(Math.min(1, left) * 1000);
        // past the start-up catch-up
        if (hls && Number.isFinite(hls.latency) && (performance.now() - t0) / 1000 - r.startupSeconds >= 2) {
          latencies.push(hls.latency);
        }
      }
    };
    if (r.started && action) {
      const first = Math.min(actionAfter, seconds);
      await watch(first);
      if (actionPhase !== null && hls) {
        await new Promise((resolve) => { onSteering = resolve; });
        onSteering = null;
        await sleep(actionPhase * 1000);
      }
      const ahead = [...Array(video.buffered.length).keys()].find(
        (i) => video.buffered.start(i) <= video.currentTime && video.currentTime <= video.buffered.end(i));
      r.bufferAheadAtAction = ahead === undefined ? 0 : video.buffered.end(ahead) - video.currentTime;
      r.actionAt = (performance.now() - t0) / 1000;
      await window.livecdnAction();
      await watch(seconds - first);
    } else if (r.started) {
      await watch(seconds);
    }
    if (latencies.length) {
      r.latency = { mean: latencies.reduce((a, b) => a + b, 0) / latencies.length,
                    last: latencies[latencies.length - 1], samples: latencies.length };
    }
    let played = 0;
    for (let i = 0; i < video.played.length; i++) played += video.played.end(i) - video.played.start(i);
    r.playedSeconds = played;
    r.currentTime = video.currentTime;
    if (hls) r.level = hls.currentLevel >= 0 ? hls.levels[hls.currentLevel]?.height ?? null : null;
    r.videoSize = [video.videoWidth, video.videoHeight];
    r.droppedFrames = video.getVideoPlaybackQuality?.().droppedVideoFrames ?? null;
    r.decodedFrames = video.getVideoPlaybackQuality?.().totalVideoFrames ?? null;
    if (hls) hls.destroy();
    if (dashPlayer) dashPlayer.reset();
    return r;
  }, { url, seconds, startTimeoutMs: START_TIMEOUT_MS, codecs: CODECS, dash, action, actionAfter, actionPhase,
       lowLatency });
  Object.assign(result, out);
} catch (e) {
  result.harnessError = String(e && e.stack || e);
} finally {
  await context.close().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}
console.log(JSON.stringify(result));
process.exit(result.harnessError ? 2 : 0);
