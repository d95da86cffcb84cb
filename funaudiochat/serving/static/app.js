// Fun-Audio-Chat web client: microphone -> PCM16 16 kHz over /v1/realtime, replies streamed back.
// No build step. Protocol: docs/serving.md. Test hooks live on window.funaudio.
'use strict';

const $ = (id) => document.getElementById(id);
const fa = window.funaudio = {
  state: 'disconnected', playedSamples: 0, scheduledSamples: 0, sentSamples: 0,
  events: [], latency: {}, session: null,
};

let ws = null, micCtx = null, micNode = null, micStream = null, outCtx = null;
let talking = false;          // push-to-talk button held
let nextPlay = 0;             // output clock time where the next chunk starts
let pendingAudio = null;      // the response.audio.delta header awaiting its binary frame
let current = null;           // {id, el, t0, firstStart, scheduled, cancelled}
let turnStart = null;         // when the user's turn ended (commit sent / speech_stopped seen)
let playing = [];             // live AudioBufferSourceNodes

function setState(s, detail) {
  fa.state = s;
  const el = $('state');
  el.textContent = detail ? `${s}: ${detail}` : s;
  el.className = `state ${s}`;
  el.dataset.state = s;
  const on = s === 'connected';
  for (const id of ['apply', 'text', 'send', 'stop']) $(id).disabled = !on;
  $('ptt').disabled = !on || $('turn').value !== 'none';
  $('connect').textContent = on || s === 'connecting' ? 'Disconnect' : 'Connect';
}

function showError(msg) { $('error').textContent = msg || ''; }

function bubble(role, text) {
  const el = document.createElement('div');
  el.className = `msg ${role}`;
  el.textContent = text;
  $('transcript').appendChild(el);
  $('transcript').scrollTop = $('transcript').scrollHeight;
  return el;
}

function sessionSettings() {
  return {
    mode: $('mode').value,
    voice: $('voice').value || null,
    instructions: $('instructions').value.trim() || null,
    turn_detection: $('turn').value,
    silence_ms: Number($('silence').value) || 600,
  };
}

function send(obj) { if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(obj)); }

// ------------------------------------------------------------------ playback
function ensureOutput() {
  if (!outCtx) outCtx = new AudioContext();
  if (outCtx.state === 'suspended') outCtx.resume();
}

function playChunk(bytes, sampleRate) {
  if (!current || current.cancelled) return;
  ensureOutput();
  const pcm = new Int16Array(bytes);
  const buf = outCtx.createBuffer(1, pcm.length, sampleRate);
  const ch = buf.getChannelData(0);
  for (let i = 0; i < pcm.length; i++) ch[i] = pcm[i] / 32768;
  const src = outCtx.createBufferSource();
  src.buffer = buf;
  src.connect(outCtx.destination);
  const start = Math.max(outCtx.currentTime + 0.02, nextPlay);
  if (current.firstStart === undefined) current.firstStart = start;
  src.start(start);
  nextPlay = start + buf.duration;
  current.scheduled = (current.scheduled || 0) + buf.duration;
  fa.scheduledSamples += pcm.length;
  playing.push(src);
  src.onended = () => {
    playing = playing.filter((s) => s !== src);
    if (!src.stopped) { fa.playedSamples += pcm.length; $('played').textContent = `${fa.playedSamples} samples`; }
  };
}

function stopPlayback() {
  for (const src of playing) { src.stopped = true; try { src.stop(); } catch (e) { /* already ended */ } }
  playing = [];
  nextPlay = 0;
}

function playedMs() {
  if (!current || current.firstStart === undefined || !outCtx) return 0;
  return Math.max(0, Math.min(current.scheduled, outCtx.currentTime - current.firstStart)) * 1000;
}

function bargeIn() {
  if (current && !current.done && !current.cancelled) {
    send({ type: 'response.cancel', audio_played_ms: Math.round(playedMs()) });
    current.cancelled = true;
  }
  stopPlayback();
}

// ------------------------------------------------------------------ microphone
async function startMic() {
  micStream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true, autoGainControl: true },
  });
  try { micCtx = new AudioContext({ sampleRate: 16000 }); } catch (e) { micCtx = new AudioContext(); }
  const source = micCtx.createMediaStreamSource(micStream);
  const onFrame = (f32) => {
    let peak = 0;
    for (let i = 0; i < f32.length; i++) peak = Math.max(peak, Math.abs(f32[i]));
    $('level').style.width = `${Math.min(100, peak * 300)}%`;
    const handsFree = $('turn').value === 'server_vad';
    if (!(handsFree || talking) || !ws || ws.readyState !== WebSocket.OPEN) return;
    const pcm = new Int16Array(f32.length);
    for (let i = 0; i < f32.length; i++) pcm[i] = Math.max(-32768, Math.min(32767, Math.round(f32[i] * 32767)));
    ws.send(pcm.buffer);
    fa.sentSamples += pcm.length;
  };
  if (micCtx.audioWorklet) {
    await micCtx.audioWorklet.addModule('/static/capture-worklet.js');
    micNode = new AudioWorkletNode(micCtx, 'capture-16k');
    micNode.port.onmessage = (e) => onFrame(e.data);
  } else {  // old browsers: ScriptProcessor (only when the context really runs at 16 kHz)
    micNode = micCtx.createScriptProcessor(512, 1, 1);
    micNode.onaudioprocess = (e) => onFrame(e.inputBuffer.getChannelData(0).slice(0));
  }
  source.connect(micNode);
  const sink = micCtx.createGain(); sink.gain.value = 0;  // keep the graph pulling without echoing the mic
  micNode.connect(sink); sink.connect(micCtx.destination);
}

function stopMic() {
  if (micStream) micStream.getTracks().forEach((t) => t.stop());
  if (micCtx) micCtx.close();
  micStream = micCtx = micNode = null;
}

// ------------------------------------------------------------------ protocol
function onEvent(ev) {
  fa.events.push(ev.type);
  switch (ev.type) {
    case 'session.created': {
      fa.session = ev;
      setState('connected');
      $('vad').textContent = ev.vad;
      const sel = $('voice');
      for (const v of ev.voices || []) { const o = document.createElement('option'); o.value = o.textContent = v; sel.appendChild(o); }
      send({ type: 'session.update', session: sessionSettings() });
      break;
    }
    case 'session.updated': break;
    case 'input_audio.speech_started':  // the server cancels the reply itself; stop what is still playing
      if (current && !current.done) current.cancelled = true;
      stopPlayback();
      break;
    case 'input_audio.speech_stopped': turnStart = performance.now(); break;
    case 'input_audio.committed': {
      const el = bubble('user', ev.transcript || '…');
      el.dataset.item = ev.item_id;
      break;
    }
    case 'input_audio.transcript': {
      const el = document.querySelector(`[data-item="${ev.item_id}"]`);
      if (el) el.textContent = ev.transcript;
      break;
    }
    case 'response.created':
      stopPlayback();
      current = { id: ev.response_id, el: bubble('assistant', ''), t0: turnStart || performance.now(), text: '' };
      current.el.dataset.response = ev.response_id;
      break;
    case 'response.text.delta':
      if (current && current.id === ev.response_id) {
        if (current.firstText === undefined) { current.firstText = performance.now() - current.t0; $('lat-text').textContent = `${current.firstText.toFixed(0)} ms`; }
        current.text += ev.delta;
        current.el.textContent = current.text.trim();
        $('transcript').scrollTop = $('transcript').scrollHeight;
      }
      break;
    case 'response.audio.delta':
      pendingAudio = ev;
      if (current && current.firstAudio === undefined) { current.firstAudio = performance.now() - current.t0; $('lat-audio').textContent = `${current.firstAudio.toFixed(0)} ms`; }
      break;
    case 'response.done':
      if (current && current.id === ev.response_id) {
        current.el.textContent = ev.text || current.text.trim() || '…';
        current.el.dataset.done = ev.reason;
        current.done = true;
        if (ev.reason === 'cancelled') current.el.classList.add('cancelled');
        fa.latency = { client_first_text_ms: current.firstText, client_first_audio_ms: current.firstAudio, server: ev.latency_ms };
      }
      turnStart = null;
      break;
    case 'error': showError(`${ev.error.code}: ${ev.error.message}`); break;
    default: break;
  }
}

async function connect() {
  showError('');
  ensureOutput();
  setState('connecting');
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  const key = $('apikey').value.trim();
  ws = new WebSocket(`${proto}//${location.host}/v1/realtime${key ? `?api_key=${encodeURIComponent(key)}` : ''}`);
  ws.binaryType = 'arraybuffer';
  ws.onmessage = (m) => {
    if (typeof m.data === 'string') { onEvent(JSON.parse(m.data)); return; }
    const header = pendingAudio; pendingAudio = null;
    if (header && current && header.response_id === current.id) playChunk(m.data, header.sample_rate);
  };
  ws.onclose = (e) => { setState(e.code === 1000 || e.code === 1005 ? 'disconnected' : 'error', e.code !== 1000 && e.code !== 1005 ? `closed ${e.code}` : ''); stopMic(); stopPlayback(); };
  ws.onerror = () => setState('error', 'connection failed');
  try { await startMic(); } catch (e) { showError(`microphone unavailable (${e.name}); you can still type`); }
}

function disconnect() { if (ws) ws.close(1000); ws = null; }

// ------------------------------------------------------------------ UI wiring
$('connect').onclick = () => (ws && ws.readyState <= WebSocket.OPEN ? disconnect() : connect());
$('apply').onclick = () => send({ type: 'session.update', session: sessionSettings() });
$('turn').onchange = () => { setState(fa.state); if (fa.state === 'connected') send({ type: 'session.update', session: { turn_detection: $('turn').value } }); };
$('stop').onclick = bargeIn;
$('textform').onsubmit = (e) => {
  e.preventDefault();
  const text = $('text').value.trim();
  if (!text) return;
  bubble('user', text);
  bargeIn();
  turnStart = performance.now();
  send({ type: 'input_text', text });
  $('text').value = '';
};
function pttDown() { if ($('ptt').disabled || talking) return; bargeIn(); talking = true; $('ptt').classList.add('active'); }
function pttUp() {
  if (!talking) return;
  talking = false; $('ptt').classList.remove('active');
  turnStart = performance.now();
  send({ type: 'input_audio.commit' });
}
$('ptt').addEventListener('pointerdown', pttDown);
$('ptt').addEventListener('pointerup', pttUp);
$('ptt').addEventListener('pointerleave', pttUp);
document.addEventListener('keydown', (e) => { if (e.code === 'Space' && e.target === document.body) { e.preventDefault(); pttDown(); } });
document.addEventListener('keyup', (e) => { if (e.code === 'Space' && e.target === document.body) { e.preventDefault(); pttUp(); } });
setState('disconnected');
