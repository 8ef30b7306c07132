// voxmesh page: picks LiveKit (POST /session answers 200) or the direct WebSocket (404),
// shows the events of docs/client-protocol.md. URL options: ?transport=ws|livekit, ?autostart=1.
import { WsTransport } from './ws-client.js';

/**
 * @typedef {object} Handlers
 * @property {(ev: any) => void} onEvent
 * @property {(text: string) => void} onStatus
 * @property {(why: string, retry?: boolean) => void} onClose  retry false: reconnecting is futile
 * @property {() => void} onPlaybackStarted
 * @property {(samples: number, bufferedMs: number) => void} onPlayback
 * @property {(ms: number) => void} onBuffer
 * @property {(stream: MediaStream, ctx: AudioContext | null) => void} onMicStream
 * @property {(node: AudioNode, ctx: AudioContext) => void} onBotAudio  the bot's audio, for its meter
 */

const $ = (id) => /** @type {HTMLElement} */ (document.querySelector(`[data-testid="${id}"]`));
const params = new URLSearchParams(location.search);
const MAX_LOG = 60;
const MAX_TURNS = 20;
// Reconnect after the server went away: 0.5 s, doubling up to 8 s, at most this many tries.
const RETRY_FIRST_MS = 500;
const RETRY_MAX_MS = 8000;
const RETRY_TRIES = 12; // ~1.3 min in all

// Everything a test may want to read, in one place.
const vm = (window.voxmesh = {
  transport: null,
  state: 'idle',
  events: [],
  transcript: '',
  reply: '',
  latencyMs: null,
  played: 0,
  responder: null, // what writes the replies: "echo" or "openai:<model>", as the server says
  mic: null, // {label, deviceId} of the microphone in use
  micPeak: 0, // highest mic level seen (0..1)
  botPeak: 0, // highest level of the bot's audio seen (0..1)
  turns: [], // per turn: {kind, text, asr, responder, tts, playback, total} in ms (null: not seen)
  connection: 'idle', // idle | connected | reconnecting | gone
  closeReason: null, // why the last connection ended
  reconnects: 0, // connections made again by the page itself
  session: null,
  // LiveKit only: {packets, energy, samples} of the agent's track, or null.
  audioStats: async () => (transport && transport.audioStats ? transport.audioStats() : null),
});

let transport = null;
let micOn = true;
let awaitingAudio = false;
let replyDone = true; // the next `reply` starts a new bot turn
let userTurnFinal = false; // a final transcript came: partials wait for the next speech_start
let botLi = null; // the Conversation line of the bot's current reply
let wanted = false; // Start pressed and not Hung up: a lost connection is made again
let retry = { tries: 0, timer: null, reason: '' };
let turn = null; // the turn being timed: {kind, t0, marks, row, rec}

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
  return li;
}

function setConnection(text, kind) {
  vm.connection = kind;
  const el = $('connection');
  el.textContent = text;
  el.dataset.kind = kind;
}

// --- per-turn latency by stage ------------------------------------------------------------
// Client-side times from the end of the user's turn (vad speech_end, or the text sent):
// transcript (final) = ASR; reply = the responder; audio_start = TTS first audio (+ the
// mesh); audible = the first reply sample played (WebSocket) or heard on the track (LiveKit).
const STAGES = [
  ['asr', 'transcript'],
  ['responder', 'reply'],
  ['tts', 'audio_start'],
  ['playback', 'audible'],
];

function newTurn(kind, text = '') {
  const now = performance.now();
  if (turn && kind === 'voice' && turn.kind === 'voice' && !Object.keys(turn.marks).length) {
    turn.t0 = now; // the user went on after a pause: the turn ends at the last speech_end
    return;
  }
  const rec = { kind, text, asr: null, responder: null, tts: null, playback: null, total: null };
  vm.turns.push(rec);
  if (vm.turns.length > MAX_TURNS) vm.turns.shift();
  const row = document.createElement('tr');
  $('turns').prepend(row);
  while ($('turns').children.length > MAX_TURNS) $('turns').lastChild.remove();
  turn = { kind, t0: now, marks: {}, row, rec };
  renderTurn(turn);
}

function mark(name) {
  if (!turn || name in turn.marks) return;
  turn.marks[name] = performance.now() - turn.t0;
  const m = turn.marks;
  // A typed turn has no ASR: its responder stage runs from the text sent.
  const voice = turn.kind === 'voice';
  const prev = { transcript: 0, reply: voice ? m.transcript : 0, audio_start: m.reply, audible: m.audio_start };
  for (const [stage, at] of STAGES) {
    if (m[at] === undefined || turn.rec[stage] !== null || (stage === 'asr' && !voice)) continue;
    const from = prev[at];
    // A streamed LLM reply comes whole after its audio began: no TTS figure from events.
    if (from !== undefined && m[at] >= from) turn.rec[stage] = Math.round(m[at] - from);
  }
  if (name === 'audible') turn.rec.total = Math.round(m.audible);
  renderTurn(turn);
}

function renderTurn(t) {
  const cells = [t.kind === 'voice' ? 'voice' : t.kind === 'say' ? 'say' : 'typed', t.rec.text];
  for (const [stage] of STAGES) cells.push(t.rec[stage]);
  cells.push(t.rec.total);
  t.row.replaceChildren(
    ...cells.map((v, i) => {
      const td = document.createElement('td');
      td.textContent = v === null || v === undefined ? '–' : i > 1 ? `${v}` : String(v);
      return td;
    }),
  );
}

function showLatency() {
  if (!awaitingAudio || !turn) return;
  awaitingAudio = false;
  mark('audible');
  vm.latencyMs = turn.rec.total;
  $('latency').textContent = `${vm.latencyMs} ms`;
}

function showResponder(name) {
  if (!name) return;
  vm.responder = name;
  const [kind, ...model] = name.split(':');
  $('responder').textContent =
    kind === 'echo' ? 'echo (repeats what you say)' : `LLM: ${model.join(':') || kind}`;
  $('responder').dataset.kind = kind;
}

async function fetchResponder() {
  // LiveKit sends no `ready`; a ready from a transport that had not heard from the router
  // yet lacks the field: GET /health says it too.
  try {
    const resp = await fetch(new URL('health', location.href));
    showResponder((await resp.json()).responder);
  } catch {
    /* shown as unknown */
  }
}

// --- the bot's reply in the panel and the Conversation ------------------------------------

function markInterrupted(li) {
  if (li) li.dataset.interrupted = 'true';
  if (!li || li === botLi) $('reply').dataset.interrupted = 'true';
}

function showHeard(utteranceId, text) {
  // What the user heard of an interrupted reply replaces its full text.
  let li = document.querySelector(`[data-testid="history"] li.bot[data-utterance="${utteranceId}"]`);
  if (!li) {
    li = addHistory('bot', text); // cut before its text came (a streamed reply)
    li.dataset.utterance = String(utteranceId);
  }
  li.textContent = text;
  li.dataset.interrupted = 'true';
  if (li === botLi) {
    vm.reply = text;
    $('reply').textContent = text;
    $('reply').dataset.interrupted = 'true';
  }
}

/** @type {Handlers} */
const handlers = {
  onEvent(ev) {
    vm.events.push(ev);
    if (vm.events.length > 1000) vm.events.splice(0, 500);
    logLine(JSON.stringify(ev), ev.type === 'error' ? 'err' : '');
    switch (ev.type) {
      case 'ready':
        vm.session = ev.session_id;
        $('session').textContent = ev.session_id;
        if (ev.responder) showResponder(ev.responder);
        else fetchResponder();
        break;
      case 'state':
        setState(ev.state);
        break;
      case 'vad':
        $('vad').dataset.active = String(ev.event === 'speech_start');
        if (ev.event === 'speech_start') userTurnFinal = false;
        if (ev.event === 'speech_end') {
          newTurn('voice');
          awaitingAudio = true;
        }
        break;
      case 'transcript':
        if (ev.final) {
          vm.transcript = ev.text;
          $('transcript').textContent = ev.text;
          $('transcript-partial').textContent = '';
          if (ev.text) addHistory('user', ev.text); // typed text too: the server echoes it
          if (turn && !turn.rec.text) {
            turn.rec.text = ev.text;
            renderTurn(turn);
          }
          mark('transcript');
          replyDone = true;
          userTurnFinal = true;
        } else if (!userTurnFinal) {
          // (a late partial of a finished turn would only repeat the final in grey)
          $('transcript-partial').textContent = ev.text;
        }
        break;
      case 'reply':
        mark('reply');
        if (replyDone) delete $('reply').dataset.interrupted;
        vm.reply = replyDone ? ev.text : `${vm.reply} ${ev.text}`;
        if (replyDone) botLi = addHistory('bot', ev.text);
        else if (botLi) botLi.textContent = vm.reply;
        replyDone = false;
        $('reply').textContent = vm.reply;
        break;
      case 'audio_start':
        mark('audio_start');
        if (botLi && !botLi.dataset.utterance) botLi.dataset.utterance = String(ev.utterance_id);
        break;
      case 'audio_end':
        if (ev.reason === 'interrupted') {
          markInterrupted(document.querySelector(`[data-testid="history"] li.bot[data-utterance="${ev.utterance_id}"]`));
        }
        break;
      case 'heard':
        showHeard(ev.utterance_id, ev.text);
        break;
      case 'error':
        $('error').textContent = `${ev.code || 'error'}: ${ev.message || ''}`;
        break;
    }
  },
  onStatus(text) {
    logLine(text, 'status');
  },
  onClose(why, retryable = true) {
    const t = transport;
    transport = null; // first: stop() below may call onClose again
    if (!t) return;
    t.stop().catch(() => {}); // releases the mic and audio even when the server left
    logLine(why, 'status');
    vm.closeReason = why;
    awaitingAudio = false;
    if (wanted && retryable) {
      addHistory('sys', `connection lost: ${why}`);
      scheduleReconnect(why);
      return;
    }
    wanted = false;
    setState('disconnected');
    setConnection(why === 'hung up' ? 'hung up' : `disconnected: ${why}`, 'gone');
    if (why !== 'hung up') $('error').textContent = `disconnected: ${why}`;
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
    const track = stream.getAudioTracks()[0];
    if (track) {
      vm.mic = { label: track.label, deviceId: track.getSettings().deviceId || '' };
      $('mic-in-use').textContent = track.label || 'microphone';
    }
    const c = ctx || new AudioContext();
    meter(c.createMediaStreamSource(stream), c, 'mic-level', 'micPeak');
    listMics(); // labels are known once the microphone is granted
  },
  onBotAudio(node, ctx) {
    meter(node, ctx, 'bot-level', 'botPeak');
  },
};

// Level bars: an analyser on the mic stream / the bot's audio, read every 100 ms.
function meter(node, ctx, testid, peakKey) {
  ctx.resume().catch(() => {});
  const an = ctx.createAnalyser();
  an.fftSize = 512;
  node.connect(an);
  const buf = new Float32Array(an.fftSize);
  const timer = setInterval(() => {
    if (ctx.state === 'closed') {
      $(testid).style.width = '0';
      return clearInterval(timer);
    }
    an.getFloatTimeDomainData(buf);
    let peak = 0;
    for (const v of buf) peak = Math.max(peak, Math.abs(v));
    vm[peakKey] = Math.max(vm[peakKey], peak);
    $(testid).style.width = `${Math.min(100, Math.round(peak * 140))}%`;
  }, 100);
}

// --- microphone picker ----------------------------------------------------------------------

async function listMics() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.enumerateDevices) return;
  const select = /** @type {HTMLSelectElement} */ ($('mic-select'));
  const chosen = select.value;
  let mics = [];
  try {
    mics = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'audioinput');
  } catch {
    return;
  }
  const options = [new Option('Default microphone', '')];
  mics.forEach((d, i) => {
    if (d.deviceId === 'default' || !d.deviceId) return; // the "Default" entry above
    options.push(new Option(d.label || `Microphone ${i + 1}`, d.deviceId));
  });
  select.replaceChildren(...options);
  select.value = options.some((o) => o.value === chosen) ? chosen : '';
}

function chosenMic() {
  return /** @type {HTMLSelectElement} */ ($('mic-select')).value || null;
}

// --- connecting ----------------------------------------------------------------------------

async function openTransport() {
  const want = params.get('transport');
  const deviceId = chosenMic();
  if (want !== 'ws') {
    let resp = null;
    try {
      // With server.auth_token set, open the page as /?token=... (the token is sent as a
      // Bearer header here and in the WebSocket hello).
      const token = params.get('token');
      const headers = token ? { Authorization: `Bearer ${token}` } : {};
      resp = await fetch(new URL('session', location.href), { method: 'POST', headers });
    } catch (err) {
      if (retry.tries) throw new Error(`the server does not answer (${err})`);
      logLine(`POST /session failed (${err}); using the WebSocket`, 'status');
    }
    if (resp && resp.ok) {
      const session = await resp.json();
      // livekit-client is ~550 kB: loaded only when the server offers LiveKit.
      const { LiveKitTransport } = await import('./lk-client.js');
      return new LiveKitTransport(handlers, session, { deviceId });
    }
    if (resp && resp.status >= 500 && retry.tries) throw new Error(`POST /session: HTTP ${resp.status}`);
    if (resp && resp.status !== 404) logLine(`POST /session: HTTP ${resp.status}`, 'err');
    if (want === 'livekit') throw new Error('LiveKit is not configured on this server');
  }
  const url = new URL('ws', location.href);
  url.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return new WsTransport(handlers, url.href, params.get('token'), { deviceId });
}

function setConnected(on) {
  $('start').hidden = on || wanted;
  $('hangup').hidden = !(on || wanted);
  $('mic').disabled = !on;
  for (const b of document.querySelectorAll('#text-form button')) b.disabled = !on;
  $('interrupt').disabled = !on;
}

async function connect() {
  const t = await openTransport();
  transport = t;
  vm.transport = t.name;
  $('transport').textContent = t.name;
  if (t.session) {
    vm.session = t.session.room;
    $('session').textContent = t.session.room; // LiveKit
    fetchResponder();
  }
  try {
    await t.start();
  } catch (err) {
    if (transport === t) transport = null;
    await t.stop().catch(() => {});
    throw err;
  }
  if (transport !== t) throw new Error(vm.closeReason || 'closed while connecting');
  t.setMicEnabled(micOn);
}

function scheduleReconnect(reason) {
  clearTimeout(retry.timer);
  if (retry.tries >= RETRY_TRIES) {
    wanted = false;
    setState('disconnected');
    setConnection(`gone: ${reason}; gave up after ${retry.tries} tries (press Start)`, 'gone');
    $('error').textContent = `server gone: ${reason}`;
    setConnected(false);
    return;
  }
  const delay = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** retry.tries);
  retry.tries += 1;
  if (!retry.reason) retry.reason = reason;
  setState('reconnecting');
  setConnected(false);
  $('error').textContent = `connection lost: ${retry.reason}`;
  const last = reason === retry.reason ? '' : ` (last try: ${reason})`;
  setConnection(
    `lost: ${retry.reason}${last}; reconnecting in ${(delay / 1000).toFixed(1)} s (try ${retry.tries} of ${RETRY_TRIES})`,
    'reconnecting',
  );
  retry.timer = setTimeout(reconnect, delay);
}

async function reconnect() {
  if (!wanted) return;
  setState('connecting');
  try {
    await connect();
  } catch (err) {
    if (wanted) scheduleReconnect(String(err.message || err));
    return;
  }
  if (!wanted) return;
  vm.reconnects += 1;
  addHistory('sys', `reconnected (session ${vm.session}) after ${retry.tries} ${retry.tries === 1 ? 'try' : 'tries'}`);
  // (WebSocket: `ready` came before connect() returned; LiveKit: the room's name)
  setConnection(`reconnected after: ${retry.reason}`, 'connected');
  $('error').textContent = '';
  retry = { tries: 0, timer: null, reason: '' };
  setConnected(true);
  if (vm.state === 'connecting' || vm.state === 'reconnecting') setState('listening');
}

async function start() {
  $('start').disabled = true;
  $('error').textContent = '';
  clearTimeout(retry.timer);
  retry = { tries: 0, timer: null, reason: '' };
  setState('connecting');
  micOn = true;
  $('mic').textContent = 'Mute mic';
  $('mic').setAttribute('aria-pressed', 'false');
  try {
    await connect();
    wanted = true;
    setConnected(true);
    setConnection('connected', 'connected');
    if (vm.state === 'connecting') setState('listening');
  } catch (err) {
    $('error').textContent = String(err.message || err);
    setState('error');
    setConnection(`not connected: ${err.message || err}`, 'gone');
  } finally {
    $('start').disabled = false;
  }
}

function hangUp() {
  wanted = false;
  clearTimeout(retry.timer);
  retry = { tries: 0, timer: null, reason: '' };
  if (transport) {
    handlers.onClose('hung up');
  } else {
    setState('disconnected');
    setConnection('hung up', 'gone');
    setConnected(false);
  }
}

$('start').addEventListener('click', start);
$('hangup').addEventListener('click', hangUp);
$('mic').addEventListener('click', () => {
  micOn = !micOn;
  transport?.setMicEnabled(micOn);
  $('mic').textContent = micOn ? 'Mute mic' : 'Unmute mic';
  $('mic').setAttribute('aria-pressed', String(!micOn));
});
$('mic-select').addEventListener('change', () => {
  if (transport) logLine('the chosen microphone is used from the next Start (or reconnect)', 'status');
});
navigator.mediaDevices?.addEventListener?.('devicechange', listMics);
$('interrupt').addEventListener('click', () => transport?.send({ type: 'interrupt' }));
document.getElementById('text-form').addEventListener('submit', (e) => {
  e.preventDefault();
  const input = /** @type {HTMLInputElement} */ ($('text-input'));
  const kind = /** @type {HTMLButtonElement} */ (e.submitter)?.value || 'text';
  const text = input.value.trim();
  if (!transport || !text) return;
  transport.send({ type: kind, text });
  // (no Conversation line here: the server's final transcript of a `text` adds it)
  replyDone = true;
  newTurn(kind, kind === 'say' ? text : '');
  awaitingAudio = true;
  input.value = '';
});
setConnected(false);
listMics();
if (params.get('autostart') === '1') start();
