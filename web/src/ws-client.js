// Direct WebSocket transport (docs/client-protocol.md): hello, s16le mic at the context rate, 48 kHz frames
// played through the pcm-player worklet, `played` acks every ~100 ms.

const MIC_CONSTRAINTS = {
  audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
};

export class WsTransport {
  /** @param {import('./main.js').Handlers} h @param {string} url */
  constructor(h, url, token = null) {
    this.name = 'websocket';
    this.h = h;
    this.url = url;
    this.token = token; // server.auth_token, when the page was opened with ?token=
    this.micOn = true;
    this.lastPlayed = -1;
    this.ws = null;
    this.ctx = null;
    this.stream = null;
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

    try {
      this.stream = await navigator.mediaDevices.getUserMedia(MIC_CONSTRAINTS);
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

    await new Promise((resolve, reject) => {
      const ws = new WebSocket(this.url);
      this.ws = ws;
      ws.binaryType = 'arraybuffer';
      ws.onopen = () => {
        const hello = { type: 'hello', sample_rate: ctx.sampleRate };
        if (this.token) hello.token = this.token;
        ws.send(JSON.stringify(hello));
        resolve();
      };
      ws.onerror = () => reject(new Error(`WebSocket ${this.url} failed`));
      ws.onclose = (e) => this.h.onClose(`websocket closed (${e.code})`);
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
    if (this.ws) this.ws.close(1000);
    if (this.stream) this.stream.getTracks().forEach((t) => t.stop());
    if (this.ctx && this.ctx.state !== 'closed') await this.ctx.close();
  }
}
