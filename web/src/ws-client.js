// Direct WebSocket transport (docs/client-protocol.md): hello, s16le mic at the context rate, 48 kHz frames
// played through the pcm-player worklet, `played` acks every ~100 ms.

const MIC_CONSTRAINTS = { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 };

// What a close code means to a user (RFC 6455 and what the transport sends).
const CLOSE_CODES = {
  1000: 'the server ended the session',
  1001: 'the server is stopping or restarting',
  1006: 'the connection dropped without a word: the server went away or the network failed',
  1008: 'refused by the server',
  1009: 'a message was too big',
  1011: 'the server hit an internal error',
  1012: 'the server is restarting',
  1013: 'the server is busy: try again later',
};

/** A close event as a sentence, and whether connecting again may help. */
export function describeClose(e) {
  const what = CLOSE_CODES[e.code] || 'the connection closed';
  const said = e.reason ? `: "${e.reason}"` : '';
  return { why: `${what} (WebSocket close ${e.code}${said})`, retry: e.code !== 1008 };
}

const HELLO_TIMEOUT_MS = 10000;

export class WsTransport {
  /** @param {import('./main.js').Handlers} h @param {string} url */
  constructor(h, url, token = null, opts = {}) {
    this.name = 'websocket';
    this.h = h;
    this.url = url;
    this.token = token; // server.auth_token, when the page was opened with ?token=
    this.micOn = true;
    this.lastPlayed = -1;
    this.ws = null;
    this.ctx = null;
    this.stream = null;
    this.deviceId = opts.deviceId || null; // the microphone picked on the page
  }

  async start() {
    const ctx = new AudioContext({ latencyHint: 'interactive' });
    this.ctx = ctx;
    await ctx.audioWorklet.addModule(new URL('./worklets.js', import.meta.url).href);
    await ctx.resume();

    this.player = new AudioWorkletNode(ctx, 'pcm-player', {
      numberOfInputs: 0,
      outputChannelCount: [1],
      processorOptions: { prebufferMs: 60 },
    });
    this.player.connect(ctx.destination);
    this.player.port.onmessage = (e) => this.onPlayer(e.data);
    this.h.onBotAudio(this.player, ctx);

    const audio = { ...MIC_CONSTRAINTS };
    if (this.deviceId) audio.deviceId = { exact: this.deviceId };
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({ audio });
    } catch (err) {
      this.h.onStatus(`no microphone (${err.name}); text only`);
    }
    if (this.stream) {
      const src = ctx.createMediaStreamSource(this.stream);
      this.mic = new AudioWorkletNode(ctx, 'mic-capture', { outputChannelCount: [1] });
      src.connect(this.mic);
      this.mic.connect(ctx.destination); // silent; keeps the node pulled by the graph
      this.mic.port.onmessage = (e) => {
        if (this.micOn && this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(e.data.pcm);
      };
      this.h.onMicStream(this.stream, ctx);
    }

    // Open, say hello, and wait for `ready` (or the error that refuses the session).
    await new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this.ws = ws;
      ws.binaryType = 'arraybuffer';
      let live = false; // `ready` came: from now on a close is news for the page
      const timer = setTimeout(() => reject(new Error('the server did not answer hello')), HELLO_TIMEOUT_MS);
      this.greeted = (ev) => {
        clearTimeout(timer);
        if (ev.type === 'ready') {
          live = true;
          resolve();
        } else {
          reject(new Error(`${ev.code}: ${ev.message}`));
        }
      };
      ws.onopen = () => {
        // The browser cancels the bot's echo itself (echoCancellation above): no server AEC.
        const hello = { type: 'hello', sample_rate: ctx.sampleRate, aec: 'client', partials: true };
        if (this.token) hello.token = this.token;
        ws.send(JSON.stringify(hello));
      };
      ws.onerror = () => reject(new Error(`cannot reach the server (WebSocket ${this.url} failed)`));
      ws.onclose = (e) => {
        clearTimeout(timer);
        const { why, retry } = describeClose(e);
        if (live) this.h.onClose(why, retry);
        else reject(new Error(`cannot reach the server (${why})`));
      };
      ws.onmessage = (e) => this.onMessage(e.data);
    });
  }

  onMessage(data) {
    if (typeof data !== 'string') {
      this.player.port.postMessage({ type: 'frame', pcm: data }, [data]);
      return;
    }
    let ev;
    try {
      ev = JSON.parse(data);
    } catch {
      return;
    }
    if (ev.type === 'clear') this.player.port.postMessage({ type: 'clear' });
    this.h.onEvent(ev);
    if (this.greeted && (ev.type === 'ready' || ev.type === 'error')) {
      const greeted = this.greeted;
      this.greeted = null;
      greeted(ev);
    }
  }

  onPlayer(msg) {
    if (msg.type === 'started') {
      this.h.onPlaybackStarted();
    } else if (msg.type === 'played') {
      this.h.onPlayback(msg.samples, msg.bufferedMs);
      if (msg.samples !== this.lastPlayed && this.ws && this.ws.readyState === WebSocket.OPEN) {
        this.lastPlayed = msg.samples;
        this.ws.send(JSON.stringify({ type: 'played', samples: msg.samples }));
      }
    }
  }

  send(msg) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(msg));
  }

  setMicEnabled(on) {
    this.micOn = on;
    if (this.stream) this.stream.getAudioTracks().forEach((t) => (t.enabled = on));
  }

  async stop() {
    this.send({ type: 'bye' });
    if (this.ws) {
      this.ws.onclose = null; // ours: not news
      this.ws.close(1000);
    }
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    if (this.ctx && this.ctx.state !== 'closed') await this.ctx.close();
  }
}
