// The story page: choices as picture cards, POST /v1/story streamed over SSE, read-aloud, history, sharing.
"use strict";

const CHOICES = {
  character: [
    ["🐱", "Curious cat", "a curious cat"], ["🤖", "Friendly robot", "a friendly robot"],
    ["🐉", "Little dragon", "a little dragon"], ["🦉", "Wise owl", "a wise owl"],
    ["🧚", "Tiny fairy", "a tiny fairy"], ["🧑‍🚀", "Young astronaut", "a young astronaut"],
    ["🐻", "Sleepy bear", "a sleepy bear"], ["🦊", "Clever fox", "a clever fox"],
  ],
  setting: [
    ["🌲", "Magical forest", "in a magical forest"], ["🪐", "Distant planet", "on a distant planet"],
    ["🌊", "Under the sea", "under the sea"], ["🏰", "Old castle", "in an old castle"],
    ["🏙️", "Busy city", "in a busy city"], ["🍭", "Candy land", "in a land made of candy"],
    ["❄️", "North Pole", "at the snowy North Pole"], ["🏝️", "Tiny island", "on a tiny island"],
  ],
  twist: [
    ["🗝️", "Glowing key", "finds a glowing key"], ["🗺️", "Secret map", "discovers a secret map"],
    ["🥚", "Mystery egg", "finds a mysterious egg"], ["🌈", "Rainbow", "follows a rainbow"],
    ["⭐", "Falling star", "catches a falling star"], ["🎩", "Magic hat", "finds a magic hat"],
    ["⛈️", "Big storm", "gets caught in a big storm"], ["🎁", "Surprise gift", "receives a surprise gift"],
  ],
  theme: [
    ["🤝", "Friendship", "friendship"], ["🧭", "Adventure", "adventure"], ["😂", "Funny", "funny"],
    ["🔍", "Mystery", "mystery"], ["🌙", "Bedtime", "calm bedtime"], ["💪", "Courage", "courage"],
    ["✨", "Magic", "magical"], ["💚", "Kindness", "kindness"],
  ],
  length: [
    ["📄", "Short · 100-200 words", "short"], ["📃", "Medium · 200-300 words", "medium"],
    ["📚", "Long · 300-400 words", "long"],
  ],
};
const CUSTOM = ["character", "setting", "twist"];      // choices that also take free text
const CUSTOM_HINT = {character: "a shy penguin", setting: "in a lighthouse", twist: "learns to whistle"};
const DEFAULTS = {character: "a curious cat", setting: "in a magical forest", twist: "finds a glowing key",
                  theme: "friendship", length: "short"};
const HISTORY_KEY = "tinygemma.stories";
const API_KEY = "tinygemma.apiKey";    // sessionStorage: the server's API key, from the address (#key=KEY)
const HISTORY_SIZE = 10;
const SENTENCE = /[^.!?]*(?:[.!?]+["'”’)]*|$)/g;    // every character lands in some sentence

const $ = (id) => document.getElementById(id);
const form = $("choices");
const storyEl = $("story");
const statusEl = $("status");
const titleEl = $("story-title");
const canSpeak = Boolean(window.speechSynthesis) && typeof window.SpeechSynthesisUtterance === "function";

let current = null;        // {title, choices, seed, text, base}: the story on the page
let controller = null;     // AbortController of the request in flight
let reading = false;       // read-aloud toggle
let spoken = 0;            // sentences already queued for speech
let currentlySpoken = -1;  // the highlighted sentence
let pendingSeed = null;    // a seed from the address (?seed=N): the next story uses it, so a link can share one

// ---- choices -------------------------------------------------------------------------------------------

function buildCards() {
  for (const fieldset of form.querySelectorAll("fieldset[data-choice]")) {
    const name = fieldset.dataset.choice;
    const grid = document.createElement("div");
    grid.className = "cards";
    for (const [emoji, label, value] of CHOICES[name]) {
      const card = document.createElement("label");
      card.className = "card";
      card.innerHTML = `<input type="radio"><span class="face"><span class="emoji" aria-hidden="true"></span>`
        + `<span class="label"></span></span>`;
      const input = card.querySelector("input");
      input.name = name;
      input.value = value;
      card.querySelector(".emoji").textContent = emoji;
      card.querySelector(".label").textContent = label;
      grid.append(card);
    }
    fieldset.append(grid);
    if (CUSTOM.includes(name)) {
      const custom = document.createElement("div");
      custom.className = "custom";
      const input = document.createElement("input");
      input.type = "text";
      input.maxLength = 120;
      input.id = `${name}-custom`;
      input.placeholder = `or your own, e.g. “${CUSTOM_HINT[name]}”`;
      input.setAttribute("aria-label", `Your own ${name} (replaces the cards)`);
      custom.append(input);
      fieldset.append(custom);
    }
  }
}

function getChoices() {
  const choices = {};
  for (const name of Object.keys(CHOICES)) {
    const custom = $(`${name}-custom`);
    const checked = form.querySelector(`input[name="${name}"]:checked`);
    choices[name] = (custom && custom.value.trim()) || (checked ? checked.value : DEFAULTS[name]);
  }
  return choices;
}

function setChoices(choices) {
  for (const name of Object.keys(CHOICES)) {
    const value = choices[name] ?? DEFAULTS[name];
    const radio = [...form.querySelectorAll(`input[name="${name}"]`)].find((r) => r.value === value);
    const custom = $(`${name}-custom`);
    for (const r of form.querySelectorAll(`input[name="${name}"]`)) r.checked = r === radio;
    if (custom) custom.value = radio ? "" : value;
    if (!radio && !custom) form.querySelector(`input[name="${name}"][value="${DEFAULTS[name]}"]`).checked = true;
  }
  reflectInUrl();
}

function reflectInUrl() {
  const query = new URLSearchParams(getChoices());
  if (pendingSeed !== null) query.set("seed", String(pendingSeed));
  history.replaceState(null, "", `${location.pathname}?${query}`);
}

function choicesFromUrl() {
  const query = new URLSearchParams(location.search);
  const choices = {};
  for (const name of Object.keys(CHOICES)) {
    const value = (query.get(name) || "").trim().slice(0, 120);
    if (value) choices[name] = value;
  }
  return choices;
}

function seedFromUrl() {
  const seed = Number.parseInt(new URLSearchParams(location.search).get("seed"), 10);
  return Number.isSafeInteger(seed) && seed >= 0 ? seed : null;
}

function surprise() {
  const pick = (list) => list[Math.floor(Math.random() * list.length)][2];
  const now = getChoices();
  const choices = {};
  for (const [name, list] of Object.entries(CHOICES)) {
    // Avoid repeating the current card, so "Surprise me" always visibly changes something.
    const others = list.filter((entry) => entry[2] !== now[name]);
    choices[name] = pick(others.length ? others : list);
  }
  setChoices(choices);
}

// ---- the story on the page -----------------------------------------------------------------------------

function sentencesOf(text) {
  return text.split(/\n{2,}/).map((para) => (para.match(SENTENCE) || []).filter(Boolean));
}

function render(streaming) {
  const text = current ? current.text : "";
  storyEl.replaceChildren();
  let index = 0;
  for (const para of sentencesOf(text)) {
    if (!para.length) continue;
    const p = document.createElement("p");
    for (const sentence of para) {
      const span = document.createElement("span");
      span.className = "sentence";
      span.dataset.index = String(index++);
      span.textContent = sentence;
      p.append(span);
    }
    storyEl.append(p);
  }
  storyEl.setAttribute("aria-busy", streaming ? "true" : "false");
  if (reading) speakNew(streaming);
}

function setStatus(text, isError = false) {
  statusEl.textContent = text;
  statusEl.classList.toggle("error", isError);
  statusEl.setAttribute("role", isError ? "alert" : "status");
}

function setBusy(busy) {
  $("make").disabled = busy;
  $("stop").disabled = !busy;
  $("continue").disabled = busy;
  $("regenerate").disabled = busy;
  $("story-actions").hidden = !current || (busy && !current.text);
}

// ---- generation ----------------------------------------------------------------------------------------

async function generate({choices, seed, base}) {
  stopSpeaking();
  if (base) spoken = sentencesOf(base).flat().length;     // Continue reads on from where the story was
  const started = performance.now();
  base = base || "";
  current = {title: current && base ? current.title : "", choices, seed, text: base, base};
  const prefix = base ? `${base}\n\n` : "";
  let part = "";
  let events = 0;
  let firstAt = null;
  controller = new AbortController();
  setBusy(true);
  setStatus("Writing…");
  render(true);
  try {
    const request = () => fetch("v1/story", {
      method: "POST",
      headers: {"Content-Type": "application/json", ...authorization()},
      body: JSON.stringify({...choices, seed, story: base}),
      signal: controller.signal,
    });
    let response = await request();
    if (response.status === 401 && askForKey()) response = await request();
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const data of sseEvents(response)) {
      if (data.error) throw new Error(data.error.message);
      if (data.story !== undefined) {            // the end: the whole part, cut to its last full sentence
        part = data.story;
      } else if (data.title !== undefined) {     // the start: the title and the words the prompt wrote
        if (!base) { current.title = data.title; titleEl.textContent = data.title; }
        part = data.text;
      } else if (data.text) {
        if (firstAt === null) firstAt = performance.now();
        part += data.text;
        events += 1;
      }
      if (data.story === undefined && firstAt !== null) {
        const seconds = (performance.now() - firstAt) / 1000;
        const rate = seconds > 0 ? (events - 1) / seconds : 0;
        setStatus(`Writing… ${rate.toFixed(1)} tokens/s`);
      }
      current.text = prefix + part;
      render(data.story === undefined);
      if (data.story !== undefined) finishStats(data.usage, started, firstAt);
    }
    saveToHistory(current);
  } catch (error) {
    if (error.name === "AbortError") {
      setStatus(`Stopped after ${countWords(current.text)} words.`);
    } else {
      setStatus(`Could not write the story: ${error.message}`, true);
    }
  } finally {
    controller = null;
    setBusy(false);
    render(false);
  }
}

function finishStats(usage, started, firstAt) {
  const now = performance.now();
  const ttft = firstAt === null ? (now - started) / 1000 : (firstAt - started) / 1000;
  const rate = firstAt !== null && now > firstAt ? (usage.completion_tokens - 1) / ((now - firstAt) / 1000) : 0;
  statusEl.dataset.ttft = ttft.toFixed(3);
  statusEl.dataset.tokensPerSecond = rate.toFixed(2);
  setStatus(`Done: ${countWords(current.text)} words (${usage.completion_tokens} new tokens), `
    + `first words after ${ttft.toFixed(2)} s, ${rate.toFixed(1)} tokens/s · seed ${current.seed}`);
}

// ---- API key (serve --api-key): from the address's #key=KEY (never sent to the server as part of the
// URL), kept for this tab only, sent as 'Authorization: Bearer KEY'; asked for when the server says 401.

function takeKeyFromAddress() {
  const match = location.hash.match(/(?:^#|&)key=([^&]*)/);
  if (!match) return;
  sessionStorage.setItem(API_KEY, decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname + location.search);    // the key leaves the address bar
}

function authorization() {
  const key = sessionStorage.getItem(API_KEY);
  return key ? {"Authorization": `Bearer ${key}`} : {};
}

function askForKey() {
  const key = window.prompt("This story server needs its API key (serve --api-key):");
  if (!key) return false;
  sessionStorage.setItem(API_KEY, key.trim());
  return true;
}

async function errorMessage(response) {
  try {
    const body = await response.json();
    if (body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON: fall through */ }
  if (response.status === 401) return "this server needs its API key: open the address with #key=KEY";
  return response.status === 503 ? "the server is busy; try again in a moment" : `HTTP ${response.status}`;
}

async function* sseEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      for (const line of block.split("\n")) {
        if (!line.startsWith("data: ")) continue;
        const payload = line.slice(6);
        if (payload === "[DONE]") return;
        yield JSON.parse(payload);
      }
    }
  }
}

function countWords(text) {
  return (text.match(/\S+/g) || []).length;
}

function newSeed() {
  return Math.floor(Math.random() * 2 ** 31);
}

// ---- read aloud ----------------------------------------------------------------------------------------

function speakNew(streaming) {
  const spans = [...storyEl.querySelectorAll(".sentence")];
  // While streaming, the last sentence may still grow: speak only the ones that are complete.
  const ready = streaming ? spans.length - 1 : spans.length;
  for (; spoken < ready; spoken++) {
    const index = spoken;
    const utterance = new SpeechSynthesisUtterance(spans[index].textContent);
    utterance.onstart = () => highlight(index);
    utterance.onend = () => { if (index === spoken - 1 && controller === null) highlight(-1); };
    speechSynthesis.speak(utterance);
  }
  highlight(currentlySpoken);
}

function highlight(index) {
  currentlySpoken = index;
  for (const span of storyEl.querySelectorAll(".sentence.speaking")) span.classList.remove("speaking");
  const span = storyEl.querySelector(`.sentence[data-index="${index}"]`);
  if (span) span.classList.add("speaking");
}

function stopSpeaking() {
  spoken = 0;
  if (canSpeak) speechSynthesis.cancel();
  highlight(-1);
}

function toggleReading() {
  reading = !reading;
  $("read-aloud").setAttribute("aria-pressed", String(reading));
  if (reading) {
    spoken = 0;
    speakNew(controller !== null);
  } else {
    stopSpeaking();
  }
}

// ---- copy, download, history ---------------------------------------------------------------------------

function describe(choices) {
  return `${choices.character} ${choices.setting} that ${choices.twist}; ${choices.theme}, ${choices.length}`;
}

function download(kind) {
  if (!current) return;
  const body = kind === "md"
    ? `# ${current.title}\n\n*${describe(current.choices)} · seed ${current.seed}*\n\n${current.text}\n`
    : `${current.title}\n\n${current.text}\n`;
  const url = URL.createObjectURL(new Blob([body], {type: kind === "md" ? "text/markdown" : "text/plain"}));
  const link = document.createElement("a");
  link.href = url;
  link.download = `${slug(current.title) || "story"}.${kind}`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function slug(text) {
  return text.toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "");
}

async function copyStory() {
  if (!current) return;
  try {
    await navigator.clipboard.writeText(`${current.title}\n\n${current.text}`);
    setStatus("Copied to the clipboard.");
  } catch (_) {
    setStatus("This browser did not allow copying: select the text instead.", true);
  }
}

function loadHistory() {
  try {
    const stories = JSON.parse(localStorage.getItem(HISTORY_KEY) || "[]");
    return Array.isArray(stories) ? stories : [];
  } catch (_) {
    return [];
  }
}

function saveToHistory(story) {
  if (!story.text.trim()) return;
  const entry = {title: story.title, choices: story.choices, seed: story.seed, text: story.text,
                 date: new Date().toISOString()};
  const stories = [entry, ...loadHistory().filter((s) => s.seed !== story.seed)].slice(0, HISTORY_SIZE);
  try {
    localStorage.setItem(HISTORY_KEY, JSON.stringify(stories));
  } catch (_) { /* storage full or disabled: the story stays on the page */ }
  showHistory();
}

function showHistory() {
  const list = $("history-list");
  const stories = loadHistory();
  list.replaceChildren();
  for (const story of stories) {
    const item = document.createElement("li");
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = `${story.title} (${countWords(story.text)} words)`;
    button.addEventListener("click", () => {
      stopSpeaking();
      current = {...story, base: ""};
      titleEl.textContent = story.title;
      setChoices(story.choices);
      setStatus(`From your history · seed ${story.seed}`);
      setBusy(false);
      render(false);
    });
    item.append(button);
    list.append(item);
  }
  $("history-empty").hidden = stories.length > 0;
}

// ---- wiring --------------------------------------------------------------------------------------------

function reset() {
  if (controller) controller.abort();
  stopSpeaking();
  current = null;
  setChoices(DEFAULTS);
  titleEl.textContent = "Your story will appear here";
  setStatus("");
  setBusy(false);
  render(false);
}

function init() {
  buildCards();
  takeKeyFromAddress();
  pendingSeed = seedFromUrl();
  setChoices({...DEFAULTS, ...choicesFromUrl()});
  form.addEventListener("change", reflectInUrl);
  form.addEventListener("input", (event) => {
    // Typing your own choice replaces the card: the radio goes off so it is clear which one counts.
    if (event.target.type !== "text") return;
    const name = event.target.id.replace("-custom", "");
    if (event.target.value.trim()) {
      for (const r of form.querySelectorAll(`input[name="${name}"]`)) r.checked = false;
    }
    reflectInUrl();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const seed = pendingSeed ?? newSeed();
    pendingSeed = null;
    reflectInUrl();
    generate({choices: getChoices(), seed});
  });
  $("surprise").addEventListener("click", surprise);
  $("stop").addEventListener("click", () => controller && controller.abort());
  $("reset").addEventListener("click", reset);
  $("continue").addEventListener("click", () => current && generate(
    {choices: current.choices, seed: newSeed(), base: current.text}));
  $("regenerate").addEventListener("click", () => current && generate({choices: current.choices, seed: newSeed()}));
  $("copy").addEventListener("click", copyStory);
  $("download-txt").addEventListener("click", () => download("txt"));
  $("download-md").addEventListener("click", () => download("md"));
  const readAloud = $("read-aloud");
  if (canSpeak) {
    readAloud.addEventListener("click", toggleReading);
  } else {
    readAloud.disabled = true;
    readAloud.title = "This browser cannot speak (no speech synthesis)";
  }
  showHistory();
  setBusy(false);
}

init();
