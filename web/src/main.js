// voxmesh page: picks LiveKit (POST /session answers 200) or the direct WebSocket (404),
// shows the events of docs/client-protocol.md. URL options: ?transport=ws|livekit, ?autostart=1.
import { WsTransport } from './ws-client.js';

/**
 * @typedef {object} Handlers
 * @property {(ev: any) => void} onEvent
 * @property {(text: string) => void} onStatus
 * @property {(why: string) => void} onClose
 * @property {() => void} onPlaybackStarted
 * @property {(samples: number, bufferedMs: number) => void} onPlayback
 * @property {(ms: number) => void} onBuffer
 * @property {(stream: MediaStream, ctx: AudioContext | null) => void} onMicStream
 */

const $ = (id) => /** @type {HTMLElement} */ (document.querySelector(`[data-testid="${id}"]`));
const params = new URLSearchParams(location.search);
const MAX_LOG = 60;

// Everything a test may want to read, in one place.
const vm = (window.voxmesh = {
  transport: null,
  state: 'idle',
  events: [],
  transcript: '',
  reply: '',
  latencyMs: null,
  played: 0,
  // LiveKit only: {packets, energy, samples} of the agent's track, or null.
  audioStats: async () => (transport && transport.audioStats ? transport.audioStats() : null),
});

let transport = null;
let micOn = true;
let speechEndAt = null; // when the user's turn ended (vad speech_end, or text sent)
let awaitingAudio = false;
let replyDone = true; // the next `reply` starts a new bot turn
let userTurnFinal = false; // a final transcript came: partials wait for the next speech_start

function setState(state) {
  vm.state = state;
  const badge = $('state');
  badge.textContent = state.replace('_', ' ');
  badge.dataset.state = state;
}

function logLine(text, cls = '') {
  const li = document.createElement('li');
  li.textContent = `${new Date().toISOString().slice(11, 23)}  ${text}`;
  if (cls) li.className = cls;
  const log = $('events');
  log.prepend(li);
  while (log.children.length > MAX_LOG) log.lastChild.remove();
}

function addHistory(who, text) {
  const li = document.createElement('li');
  li.className = who;
  li.textContent = text;
  $('history').append(li);
  li.scrollIntoView({ block: 'nearest' });
}

function turnEnded() {
  speechEndAt = performance.now();
  awaitingAudio = true;
}

function showLatency() {
  if (!awaitingAudio || speechEndAt === null) return;
  awaitingAudio = false;
  vm.latencyMs = Math.round(performance.now() - speechEndAt);
  $('latency').textContent = `${vm.latencyMs} ms`;
}

/** @type {Handlers} */
const handlers = {
  onEvent(ev) {
    vm.events.push(ev);
    logLine(JSON.stringify(ev), ev.type === 'error' ? 'err' : '');
    switch (ev.type) {
      case 'ready':
        $('session').textContent = ev.session_id;
        break;
      case 'state':
        setState(ev.state);
        break;
      case 'vad':
        $('vad').dataset.active = String(ev.event === 'speech_start');
        if (ev.event === 'speech_start') userTurnFinal = false;
        if (ev.event === 'speech_end') turnEnded();
        break;
      case 'transcript':
        if (ev.final) {
          vm.transcript = ev.text;
          $('transcript').textContent = ev.text;
          $('transcript-partial').textContent = '';
          if (ev.text) addHistory('user', ev.text);
          replyDone = true;
          userTurnFinal = true;
        } else if (!userTurnFinal) {
          // (a late partial of a finished turn would only repeat the final in grey)
          $('transcript-partial').textContent = ev.text;
        }
        break;
      case 'reply':
        if (replyDone) delete $('reply').dataset.interrupted;
        vm.reply = replyDone ? ev.text : `${vm.reply} ${ev.text}`;
        if (replyDone) addHistory('bot', ev.text);
        else $('history').lastChild.textContent = vm.reply;
        replyDone = false;
        $('reply').textContent = vm.reply;
        break;
      case 'audio_end':
        if (ev.reason === 'interrupted') $('reply').dataset.interrupted = 'true';
        break;
      case 'error':
        $('error').textContent = `${ev.code || 'error'}: ${ev.message || ''}`;
        break;
    }
  },
  onStatus(text) {
    logLine(text, 'status');
  },
  onClose(why) {
    const t = transport;
    transport = null; // first: stop() below may call onClose again
    if (t) t.stop().catch(() => {}); // releases the mic and audio even when the server left
    logLine(why, 'status');
    setState('disconnected');
    setConnected(false);
  },
  onPlaybackStarted() {
    showLatency(); // the first reply sample rendered (WebSocket) or audible (LiveKit)
  },
  onPlayback(samples, bufferedMs) {
    vm.played = samples;
    $('buffer').textContent = `${Math.round(bufferedMs)} ms`;
  },
  onBuffer(ms) {
    $('buffer').textContent = `${Math.round(ms)} ms`; // LiveKit: WebRTC's jitter buffer
  },
  onMicStream(stream, ctx) {
    meter(stream, ctx || new AudioContext());
  },
};

// Mic level bar: an analyser on the mic stream, read every 100 ms.
function meter(stream, ctx) {
  ctx.resume().catch(() => {});
  const an = ctx.createAnalyser();
  an.fftSize = 512;
  ctx.createMediaStreamSource(stream).connect(an);
  const buf = new Float32Array(an.fftSize);
  const timer = setInterval(() => {
    if (ctx.state === 'closed') return clearInterval(timer);
    an.getFloatTimeDomainData(buf);
    let peak = 0;
    for (const v of buf) peak = Math.max(peak, Math.abs(v));
    $('mic-level').style.width = `${Math.min(100, Math.round(peak * 140))}%`;
  }, 100);
}

async function openTransport() {
  const want = params.get('transport');
  if (want !== 'ws') {
    let resp = null;
    try {
      // With server.auth_token set, open the page as /?token=... (the token is sent as a
      // Bearer header here and in the WebSocket hello).
      const token = params.get('token');
      const headers = token ? { Authorization: `Bearer ${token}` } : {};
      resp = await fetch(new URL('session', location.href), { method: 'POST', headers });
    } catch (err) {
      logLine(`POST /session failed (${err}); using the WebSocket`, 'status');
    }
    if (resp && resp.ok) {
      const session = await resp.json();
      // livekit-client is ~550 kB: loaded only when the server offers LiveKit.
      const { LiveKitTransport } = await import('./lk-client.js');
      return new LiveKitTransport(handlers, session);
    }
    if (resp && resp.status !== 404) logLine(`POST /session: HTTP ${resp.status}`, 'err');
    if (want === 'livekit') throw new Error('LiveKit is not configured on this server');
  }
  const url = new URL('ws', location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return new WsTransport(handlers, url.href, params.get('token'));
}

function setConnected(on) {
  $('start').hidden = on;
  $('hangup').hidden = !on;
  $('mic').disabled = !on;
  for (const b of document.querySelectorAll('#text-form button')) b.disabled = !on;
  $('interrupt').disabled = !on;
}

async function start() {
  $('start').disabled = true;
  $('error').textContent = '';
  setState('connecting');
  try {
    transport = await openTransport();
    vm.transport = transport.name;
    $('transport').textContent = transport.name;
    if (transport.session) $('session').textContent = transport.session.room; // LiveKit
    await transport.start();
    setConnected(true);
    setState('listening');
    micOn = true;
    $('mic').textContent = 'Mute mic';
  } catch (err) {
    $('error').textContent = String(err.message || err);
    setState('error');
    if (transport) await transport.stop().catch(() => {});
    transport = null;
  } finally {
    $('start').disabled = false;
  }
}

$('start').addEventListener('click', start);
$('hangup').addEventListener('click', () => handlers.onClose('hung up'));
$('mic').addEventListener('click', () => {
  micOn = !micOn;
  transport?.setMicEnabled(micOn);
  $('mic').textContent = micOn ? 'Mute mic' : 'Unmute mic';
  $('mic').setAttribute('aria-pressed', String(!micOn));
});
$('interrupt').addEventListener('click', () => transport?.send({ type: 'interrupt' }));
document.getElementById('text-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const input = /** @type {HTMLInputElement} */ ($('text-input'));
  const kind = /** @type {HTMLButtonElement} */ (e.submitter)?.value || 'text';
  if (!transport || !input.value.trim()) return;
  transport.send({ type: kind, text: input.value.trim() });
  if (kind === 'text') addHistory('user', input.value.trim());
  replyDone = true;
  turnEnded();
  input.value = '';
});
setConnected(false);
if (params.get('autostart') === '1') start();
