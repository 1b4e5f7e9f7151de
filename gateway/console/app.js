// The bulkhead console: chat for a tenant's users, a dashboard for operators.
// It talks only to the gateway's API on this origin (/v1 with a tenant key,
// /admin/v1 with the admin token), so everything it shows is scriptable too.
// The key or token stays in this tab's sessionStorage.
'use strict';

// ---------------------------------------------------------------------------
// Small helpers

const $ = (selector, root = document) => root.querySelector(selector);

// ---------------------------------------------------------------------------
// The chat's words, in English and Simplified Chinese: one catalogue, as the
// gateway's own (gateway/locales/*.ftl) for its error messages. The language
// is the gateway's choice for this browser (its Accept-Language, else the
// tenant's `locale`), which GET /v1/tenant reports; before sign-in, the
// browser's own.

const MESSAGES = {
  en: {
    'signin.title': 'Chat',
    'signin.hint': 'Sign in with the API key your operator gave your team.',
    'signin.key': 'Tenant API key',
    'signin.button': 'Sign in to chat',
    'signin.invalid': 'That key is not valid: it is unknown, revoked or expired.',
    'signin.revoked': 'Your API key is no longer valid: it was revoked or has expired. Ask your operator for a new key and sign in again.',
    'nav.sign_out': 'Sign out',
    loading: 'Loading…',
    'chat.placeholder': 'Message {name}… (Enter to send, Shift+Enter for a new line)',
    'chat.code_run': ' Run Python',
    'chat.code_run_hint': 'The model writes Python; the gateway runs it in a sandbox and shows the result',
    'chat.send': 'Send',
    'chat.stop': 'Stop',
    'chat.stopped': 'Stopped.',
    'chat.new_session': '+ New session',
    'chat.my_sessions': 'My sessions ({user})',
    'chat.all_sessions': 'All sessions',
    'chat.untitled': 'Untitled session',
    'chat.welcome': 'Ask a question to start a session.',
    'chat.tokens_left': '{tokens} tokens left today for {name}',
    'model.loading': 'The model {model} is loading on a worker: {pct} done. Your message will be sent as soon as it is ready.',
    'model.unavailable': "No worker serves the model {model} right now (the operators' live monitor shows it too); try again later.",
    'burst.title': 'More quota today',
    'burst.reason': 'Why your team needs more tokens today',
    'burst.button': 'Request burst quota',
    'burst.line': '{day}: {status}, +{tokens} tokens',
  },
  'zh-CN': {
    'signin.title': '对话',
    'signin.hint': '请使用运维人员发给您团队的 API 密钥登录。',
    'signin.key': '租户 API 密钥',
    'signin.button': '登录并开始对话',
    'signin.invalid': '该密钥无效：不存在、已吊销或已过期。',
    'signin.revoked': '您的 API 密钥已失效：已被吊销或已过期。请向运维人员索取新密钥后重新登录。',
    'nav.sign_out': '退出登录',
    loading: '加载中…',
    'chat.placeholder': '给 {name} 发消息…（Enter 发送，Shift+Enter 换行）',
    'chat.code_run': ' 运行 Python',
    'chat.code_run_hint': '模型编写 Python 代码，网关在沙箱中运行并显示结果',
    'chat.send': '发送',
    'chat.stop': '停止',
    'chat.stopped': '已停止。',
    'chat.new_session': '+ 新建会话',
    'chat.my_sessions': '我的会话（{user}）',
    'chat.all_sessions': '全部会话',
    'chat.untitled': '未命名会话',
    'chat.welcome': '提一个问题即可开始新会话。',
    'chat.tokens_left': '{name} 今日剩余 {tokens} 个 token',
    'model.loading': '模型 {model} 正在工作节点上加载：已完成 {pct}。模型就绪后将立即发送您的消息。',
    'model.unavailable': '目前没有工作节点提供模型 {model}（运维人员的实时监控中也可看到）；请稍后再试。',
    'burst.title': '申请今日额外配额',
    'burst.reason': '说明您的团队今天为何需要更多 token',
    'burst.button': '申请突发配额',
    'burst.line': '{day}：{status}，+{tokens} 个 token',
  },
};

/** The catalogue's language for a tag such as `zh-CN`, `zh-TW` or `en-US`. */
function catalogueFor(tag) {
  const primary = String(tag || '').split(/[-_]/)[0].toLowerCase();
  return primary === 'zh' ? 'zh-CN' : primary === 'en' ? 'en' : null;
}

let lang = (navigator.languages || [navigator.language]).map(catalogueFor).find(Boolean) || 'en';

function setLang(tag) {
  lang = catalogueFor(tag) || lang;
  document.documentElement.lang = lang;
  const out = document.getElementById('sign-out');
  if (out) out.textContent = tr('nav.sign_out');
}

/** The catalogue's text for `id` in the current language, with `{name}`s filled in. */
function tr(id, vars = {}) {
  const text = MESSAGES[lang]?.[id] ?? MESSAGES.en[id] ?? id;
  return text.replace(/\{(\w+)\}/g, (_, name) => String(vars[name] ?? ''));
}
/** Resolves after `ms`, or rejects with an AbortError when `signal` aborts. */
function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal?.addEventListener(
      'abort',
      () => {
        clearTimeout(timer);
        reject(new DOMException('Stopped', 'AbortError'));
      },
      { once: true },
    );
  });
}

/** Builds an element; text children are inserted as text, never as HTML. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  let value;
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value') value = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  if (value !== undefined) el.value = value;
  return el;
}

const fmtInt = (n) => Number(n || 0).toLocaleString('en-US');
const fmtTime = (ms) => (ms ? new Date(Number(ms)).toISOString().replace('T', ' ').slice(0, 19) + ' UTC' : '—');
function fmtBytes(n) {
  n = Number(n || 0);
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 / 1024).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(2)} GiB`;
}
const pct = (x) => `${Math.round(Number(x || 0) * 100)}%`;
const isoDay = (d) => d.toISOString().slice(0, 10);
function daysAgo(n) {
  const d = new Date();
  d.setUTCDate(d.getUTCDate() - n);
  return isoDay(d);
}

function alertBox(kind, ...text) {
  return h('div', { class: `alert ${kind}`, role: 'alert' }, ...text);
}
function show(where, kind, ...text) {
  const el = typeof where === 'string' ? $(where) : where;
  if (el) el.replaceChildren(text.length ? alertBox(kind, ...text) : '');
}

/** An event handler that runs `act` and shows its failure in `error`. */
const attempt = (error, act) => async (e) => {
  e?.preventDefault();
  try {
    await act();
  } catch (err) {
    show(error, 'error', err.message);
  }
};

// ---------------------------------------------------------------------------
// Signing in: the credential lives in this tab only

const auth = {
  get() {
    try {
      return JSON.parse(sessionStorage.getItem('bulkhead.auth'));
    } catch {
      return null;
    }
  },
  set(value) {
    sessionStorage.setItem('bulkhead.auth', JSON.stringify(value));
  },
  clear() {
    sessionStorage.removeItem('bulkhead.auth');
  },
};

class ApiError extends Error {
  constructor(status, body, text) {
    super(body?.error?.message || text || `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code || null;
    this.progress = body?.error?.progress;
  }
}

/** Calls the API with the signed-in credential (or `token`). */
async function api(path, { method = 'GET', body, token, raw = false, signal, headers = {} } = {}) {
  const signedIn = auth.get();
  const secret = token ?? signedIn?.secret;
  const h2 = { ...headers };
  if (secret) h2.authorization = `Bearer ${secret}`;
  // A tenant's requests name their tenant, as the article's walkthrough
  // shows in DevTools; the gateway refuses a key for another tenant.
  if (!token && signedIn?.role === 'tenant' && signedIn.tenant) h2['x-tenant-id'] = signedIn.tenant;
  let payload;
  if (body !== undefined) {
    h2['content-type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  const res = await fetch(path, { method, headers: h2, body: payload, signal, credentials: 'omit' });
  if (!res.ok) {
    const text = await res.text();
    let json = null;
    try {
      json = JSON.parse(text);
    } catch {
      /* not JSON */
    }
    throw new ApiError(res.status, json, text);
  }
  if (raw) return res;
  const type = res.headers.get('content-type') || '';
  return type.includes('json') ? res.json() : res.text();
}

function go(hash) {
  if (location.hash === hash) route();
  else location.hash = hash;
}

function signOut() {
  auth.clear();
  go('#/');
}

// ---------------------------------------------------------------------------
// Layout and routing

// Each route() starts a generation; a view that awaited across a newer
// navigation must not draw over the newer page.
let generation = 0;
let timers = [];
function alive() {
  const mine = generation;
  return () => mine === generation;
}

function setNav(items, active) {
  $('#nav').replaceChildren(
    ...items.map(([id, label]) =>
      h('a', { href: `#/${id}`, id: `nav-${id}`, class: id === active ? 'active' : '' }, label),
    ),
  );
}

function page(...children) {
  $('#app').replaceChildren(...children);
}

const ADMIN_VIEWS = [
  ['tenants', 'Tenants', viewTenants],
  ['usage', 'Usage', viewUsage],
  ['monitor', 'Live monitor', viewMonitor],
  ['bursts', 'Bursts', viewBursts],
  ['webhooks', 'Webhooks', viewWebhooks],
  ['audit', 'Audit trail', viewAudit],
];

async function route() {
  generation += 1;
  timers.forEach(clearTimeout);
  timers = [];
  const who = auth.get();
  const [view, ...rest] = location.hash.replace(/^#\/?/, '').split('/').map(decodeURIComponent);
  $('#sign-out').hidden = !who;
  $('#who').textContent = who ? (who.role === 'admin' ? 'operator' : who.name || '') : '';
  if (!who) return viewSignin();
  // The chat is one page: a hash change must not wipe a conversation (or
  // an answer that is still streaming).
  if (who.role === 'tenant') return $('#composer') ? undefined : viewChat();
  const found = ADMIN_VIEWS.find(([id]) => id === view) || ADMIN_VIEWS[0];
  setNav(ADMIN_VIEWS, found[0]);
  try {
    await found[2](rest);
  } catch (e) {
    if (e.status === 401) {
      auth.clear();
      return viewSignin('The admin token was refused; sign in again.');
    }
    page(h('h1', {}, found[1]), alertBox('error', e.message));
  }
}

// ---------------------------------------------------------------------------
// Sign-in page

function viewSignin(message) {
  setNav([]);
  const tenantError = h('div', { id: 'tenant-signin-error' });
  const adminError = h('div', { id: 'admin-signin-error' });
  const tenantSignin = h(
    'form',
    {
      id: 'tenant-signin',
      class: 'card',
      onsubmit: async (e) => {
        e.preventDefault();
        const key = $('#tenant-key').value.trim();
        try {
          const t = await api('/v1/tenant', { token: key });
          auth.set({ role: 'tenant', secret: key, name: t.display_name, tenant: t.id });
          go('#/chat');
        } catch (err) {
          show(tenantError, 'error', err.status === 401 ? tr('signin.invalid') : err.message);
        }
      },
    },
    h('h2', {}, tr('signin.title')),
    h('p', { class: 'muted' }, tr('signin.hint')),
    h('label', {}, tr('signin.key'), h('input', { id: 'tenant-key', type: 'password', autocomplete: 'off', placeholder: 'bk_…', required: true })),
    h('button', { id: 'tenant-signin-button', class: 'primary', type: 'submit' }, tr('signin.button')),
    tenantError,
  );
  const adminSignin = h(
    'form',
    {
      id: 'admin-signin',
      class: 'card',
      onsubmit: async (e) => {
        e.preventDefault();
        const token = $('#admin-token').value.trim();
        try {
          await api('/admin/v1/cluster', { token });
          auth.set({ role: 'admin', secret: token });
          go('#/tenants');
        } catch (err) {
          show(adminError, 'error', err.status === 401 ? 'That admin token is not valid.' : err.message);
        }
      },
    },
    h('h2', {}, 'Operator'),
    h('p', { class: 'muted' }, 'Sign in with the cluster’s admin token (bulkhead up prints it).'),
    h('label', {}, 'Admin token', h('input', { id: 'admin-token', type: 'password', autocomplete: 'off', required: true })),
    h('button', { id: 'admin-signin-button', class: 'primary', type: 'submit' }, 'Sign in to the dashboard'),
    adminError,
  );
  page(message ? alertBox('warn', message) : '', h('div', { class: 'signin' }, tenantSignin, adminSignin));
}

// ---------------------------------------------------------------------------
// Chat

const chat = { tenant: null, sessions: [], current: null, busy: false, controller: null };

async function viewChat() {
  setNav([]);
  page(h('p', { class: 'muted' }, tr('loading')));
  const live = alive();
  let t;
  try {
    t = await api('/v1/tenant');
  } catch (e) {
    return chatRefused(e);
  }
  if (!live()) return;
  setLang(t.locale);
  chat.tenant = t;
  $('#who').textContent = t.display_name;
  const composer = h(
    'form',
    {
      id: 'composer',
      class: 'composer',
      onsubmit: (e) => {
        e.preventDefault();
        send($('#prompt').value);
      },
    },
    h('textarea', {
      id: 'prompt',
      placeholder: tr('chat.placeholder', { name: t.display_name }),
      onkeydown: (e) => {
        if (e.key === 'Enter' && !e.shiftKey) {
          e.preventDefault();
          send($('#prompt').value);
        }
      },
    }),
    (t.features?.tools || []).includes('code_run')
      ? h(
          'label',
          { class: 'tool-toggle', title: tr('chat.code_run_hint') },
          h('input', { id: 'use-code-run', type: 'checkbox' }),
          tr('chat.code_run'),
        )
      : null,
    h('button', { id: 'send', class: 'primary', type: 'submit' }, tr('chat.send')),
    h('button', { id: 'stop', type: 'button', hidden: true, onclick: () => chat.controller?.abort() }, tr('chat.stop')),
  );
  page(
    h(
      'div',
      { class: 'chat' },
      h(
        'aside',
        { class: 'sidebar' },
        h('h1', { id: 'tenant-name' }, t.display_name),
        h('button', { id: 'new-session', class: 'primary', type: 'button', onclick: newSession }, tr('chat.new_session')),
        // A user's key sees that user's sessions only; a tenant-wide key, everyone's.
        t.user
          ? h('h2', { id: 'sessions-title', class: 'muted' }, tr('chat.my_sessions', { user: t.user }))
          : h('h2', { id: 'sessions-title', class: 'muted' }, tr('chat.all_sessions')),
        h('ul', { id: 'sessions' }),
        burstBox(t),
      ),
      h(
        'section',
        { class: 'conversation' },
        h('div', { id: 'model-status' }),
        h('div', { id: 'messages' }),
        h('div', { id: 'chat-error' }),
        h('div', { id: 'quota-line', class: 'muted', style: 'padding: 0 12px' }),
        composer,
      ),
    ),
  );
  modelStatus(t.model, t.model_status);
  if (!(await loadSessions())) return;
  if (chat.current && chat.sessions.some((s) => s.id === chat.current)) await openSession(chat.current);
  else newSession();
}

function modelStatus(model, status) {
  const el = $('#model-status');
  if (!el) return;
  if (!status || status.state === 'ready') return el.replaceChildren();
  if (status.state === 'loading') {
    el.replaceChildren(
      alertBox(
        'warn',
        tr('model.loading', { model, pct: pct(status.progress) }),
        h('progress', { id: 'model-progress', class: 'progress', max: '100', value: String(Math.round(status.progress * 100)) }),
      ),
    );
  } else {
    el.replaceChildren(alertBox('error', tr('model.unavailable', { model })));
  }
}

function chatRefused(e) {
  if (e.status === 401) {
    auth.clear();
    chat.current = null;
    return viewSignin(tr('signin.revoked'));
  }
  page(alertBox('error', e.message));
}

/** Lists the sessions; false when the key was refused (and the user sent to sign in). */
async function loadSessions() {
  try {
    const list = await api('/v1/sessions');
    chat.sessions = list.data.sort((a, b) => b.updated_at - a.updated_at);
  } catch (e) {
    if (e.status !== 401) {
      show('#chat-error', 'error', e.message);
      return true;
    }
    if (!chat.busy) chatRefused(e);
    return false;
  }
  $('#sessions')?.replaceChildren(
    ...chat.sessions.map((s) =>
      h(
        'li',
        {},
        h(
          'button',
          {
            type: 'button',
            class: s.id === chat.current ? 'active' : '',
            dataset: { session: s.id },
            title: s.title,
            onclick: () => openSession(s.id),
          },
          s.title || tr('chat.untitled'),
        ),
      ),
    ),
  );
  return true;
}

function markActive() {
  document.querySelectorAll('#sessions button').forEach((b) => b.classList.toggle('active', b.dataset.session === chat.current));
}

/** The "request burst quota" box, for tenants whose plan has bursts: a
 * reason to send, and the tenant's latest requests with their decisions. */
function burstBox(t) {
  if (!t.features?.burst) return null;
  const status = h('div', { id: 'burst-status', class: 'muted' });
  const refresh = async () => {
    const { data } = await api('/v1/burst_requests');
    status.replaceChildren(
      ...data.slice(0, 3).map((b) =>
        h('div', { class: 'burst', dataset: { status: b.status } }, tr('burst.line', { day: b.day, status: b.status, tokens: fmtInt(b.extra_tokens) })),
      ),
    );
  };
  const form = h(
    'form',
    {
      id: 'burst-form',
      onsubmit: attempt(status, async () => {
        await api('/v1/burst_requests', { method: 'POST', body: { reason: $('#burst-reason').value } });
        $('#burst-reason').value = '';
        await refresh();
      }),
    },
    h('h2', {}, tr('burst.title')),
    h('textarea', { id: 'burst-reason', placeholder: tr('burst.reason'), required: true }),
    h('button', { id: 'burst-request', type: 'submit' }, tr('burst.button')),
    status,
  );
  refresh().catch((e) => show(status, 'error', e.message));
  return form;
}

function newSession() {
  if (chat.busy) return;
  chat.current = null;
  markActive();
  const t = chat.tenant;
  $('#chat-error').replaceChildren();
  $('#messages').replaceChildren(
    h(
      'div',
      { id: 'welcome', class: 'welcome' },
      h('h2', {}, t.display_name),
      h('p', { id: 'welcome-message' }, t.welcome_message || tr('chat.welcome')),
      h(
        'div',
        { class: 'quick' },
        t.quick_prompts.map((q) => h('button', { type: 'button', class: 'quick-prompt', onclick: () => send(q) }, q)),
      ),
    ),
  );
  $('#prompt').focus();
}

function bubble(role, text) {
  return h('div', { class: `msg ${role}`, dataset: { role } }, text);
}

/** One server-side tool run: its code (or arguments), how it ended, its output, its files. */
function toolStep(step) {
  const files = (step.files || []).map((f) => {
    const label = `⬇ ${f.name} (${fmtBytes(f.bytes)})`;
    if (f.content_base64) {
      return h('a', { class: 'tool-file', download: f.name, href: `data:application/octet-stream;base64,${f.content_base64}` }, label);
    }
    // A step read back from the session: the file is among the tenant's files.
    const link = h('a', { class: 'tool-file', href: '#' }, label);
    link.addEventListener('click', async (e) => {
      e.preventDefault();
      if (!f.file_id) return;
      const res = await api(`/v1/files/${encodeURIComponent(f.file_id)}/content`, { raw: true });
      const url = URL.createObjectURL(await res.blob());
      const a = h('a', { href: url, download: f.name });
      a.click();
      setTimeout(() => URL.revokeObjectURL(url), 10000);
    });
    return link;
  });
  const output = [step.stdout, step.stderr, step.error].filter(Boolean).join('\n');
  return h(
    'div',
    { class: 'msg tool-step', dataset: { status: step.status || '' } },
    h('div', { class: 'muted' }, `${step.tool} · ${step.status}${step.duration_ms !== undefined ? ` · ${step.duration_ms} ms` : ''}`),
    h('pre', { class: 'tool-code' }, step.code || (step.arguments ? JSON.stringify(step.arguments, null, 2) : '')),
    output ? h('pre', { class: 'tool-output' }, output) : null,
    ...files,
  );
}

async function openSession(id) {
  if (chat.busy) return;
  chat.current = id;
  markActive();
  $('#chat-error').replaceChildren();
  try {
    const turns = await api(`/v1/sessions/${encodeURIComponent(id)}/messages`);
    if (chat.current !== id || chat.busy) return; // another session was opened meanwhile
    $('#messages').replaceChildren(
      ...turns.data
        .filter((m) => m.role === 'user' || m.role === 'assistant' || m.role === 'tool')
        .map((m) => (m.role === 'tool' ? toolStep(JSON.parse(m.content)) : bubble(m.role, m.content))),
    );
    $('#messages').scrollTop = 1e9;
  } catch (e) {
    if (e.status === 401) return chatRefused(e);
    show('#chat-error', 'error', e.message);
  }
}

/** Streams one answer into `onDelta` (and server-side tool steps into
 * `onSteps`); resolves with the response headers. */
async function streamChat(text, onDelta, signal, onSteps) {
  const body = { model: chat.tenant.model, stream: true, messages: [{ role: 'user', content: text }] };
  if ($('#use-code-run')?.checked) {
    // The user asked for code: the model must write some, the gateway runs it.
    body.tools = [{ type: 'code_run' }];
    body.tool_choice = { type: 'function', function: { name: 'code_run' } };
  }
  const res = await api('/v1/chat/completions', {
    method: 'POST',
    raw: true,
    signal,
    headers: { 'x-session-id': chat.current },
    body,
  });
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return res.headers;
    buffer += value;
    let i;
    while ((i = buffer.indexOf('\n')) >= 0) {
      const line = buffer.slice(0, i).replace(/\r$/, '');
      buffer = buffer.slice(i + 1);
      if (!line.startsWith('data:')) continue;
      const data = line.slice(5).trim();
      if (data === '[DONE]') return res.headers;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk);
      if (chunk.tool_steps && onSteps) onSteps(chunk.tool_steps);
      const delta = chunk.choices?.[0]?.delta?.content;
      if (delta) onDelta(delta);
    }
  }
}

async function send(text) {
  text = (text || '').trim();
  if (!text || chat.busy) return;
  chat.busy = true;
  chat.controller = new AbortController();
  $('#send').disabled = true;
  $('#stop').hidden = false;
  $('#prompt').value = '';
  $('#chat-error').replaceChildren();
  let answer = null;
  try {
    if (!chat.current) {
      const s = await api('/v1/sessions', { method: 'POST', body: { title: text.slice(0, 60) } });
      chat.current = s.id;
      $('#messages').replaceChildren();
      await loadSessions();
    }
    const messages = $('#messages');
    messages.append(bubble('user', text));
    answer = bubble('assistant', '');
    answer.dataset.done = '0';
    messages.append(answer);
    for (;;) {
      try {
        const headers = await streamChat(
          text,
          (d) => {
            answer.textContent += d;
            messages.scrollTop = 1e9;
          },
          chat.controller.signal,
          (steps) => {
            for (const step of steps) messages.insertBefore(toolStep(step), answer);
          },
        );
        const left = headers.get('x-ratelimit-remaining-tokens');
        if (left !== null) $('#quota-line').textContent = tr('chat.tokens_left', { tokens: fmtInt(left), name: chat.tenant.display_name });
        modelStatus(chat.tenant.model, { state: 'ready' });
        break;
      } catch (e) {
        if (e.code !== 'model_loading') throw e;
        // The worker is still loading the model: show how far, then try again.
        modelStatus(chat.tenant.model, { state: 'loading', progress: e.progress || 0 });
        await sleep(2000, chat.controller.signal);
      }
    }
    answer.dataset.done = '1';
  } catch (e) {
    if (answer) {
      answer.dataset.done = '1';
      if (!answer.textContent) answer.remove();
    }
    chatError(e);
  } finally {
    chat.busy = false;
    chat.controller = null;
    // Gone when a refused key sent the user back to the sign-in page.
    if ($('#composer')) {
      $('#send').disabled = false;
      $('#stop').hidden = true;
      loadSessions();
    }
  }
}

function chatError(e) {
  if (e.name === 'AbortError') return show('#chat-error', 'warn', tr('chat.stopped'));
  if (e.status === 401) return chatRefused(e);
  // The gateway's own words (for a 429: which limit, when it resets, what to do).
  show('#chat-error', 'error', e.message);
}

// ---------------------------------------------------------------------------
// Operator: tenants and keys

const LIMITS = [
  ['daily_tokens', 'Daily tokens'],
  ['max_concurrent', 'Concurrent requests'],
  ['max_request_tokens', 'Tokens per request'],
  ['context_window', 'Context window'],
  ['context_turns', 'Context turns'],
];
const TEXTS = [
  ['display_name', 'Display name', 'input'],
  ['model', 'Model (empty: the default)', 'input'],
  ['adapter', 'LoRA adapter', 'input'],
  ['system_prompt', 'System prompt', 'textarea'],
  ['welcome_message', 'Welcome message', 'textarea'],
];

async function viewTenants([selected, panel]) {
  const live = alive();
  const [{ tenants }, { plans }] = await Promise.all([api('/admin/v1/tenants'), api('/admin/v1/plans')]);
  if (!live()) return;
  const detail = h('div', { id: 'tenant-detail' });
  page(
    h('div', { class: 'row' }, h('h1', { style: 'flex:1' }, 'Tenants'), h('button', { id: 'new-tenant', class: 'primary', type: 'button', onclick: () => tenantForm(detail, null, plans) }, 'New tenant')),
    h(
      'div',
      { class: 'card' },
      h(
        'table',
        { id: 'tenants-table' },
        h('thead', {}, h('tr', {}, h('th', {}, 'Tenant'), h('th', {}, 'Plan'), h('th', { class: 'num' }, 'Daily tokens'), h('th', {}, 'Model'), h('th', {}, ''))),
        h(
          'tbody',
          {},
          tenants.map((t) =>
            h(
              'tr',
              { dataset: { tenant: t.id } },
              h('td', {}, h('strong', {}, t.display_name || t.id), h('div', { class: 'muted' }, t.id)),
              h('td', {}, t.plan),
              h('td', { class: 'num' }, fmtInt(t.limits.daily_tokens)),
              h('td', {}, t.model || '(default)', t.adapter ? ` + ${t.adapter}` : ''),
              h(
                'td',
                {},
                h(
                  'div',
                  { class: 'row' },
                  h('button', { type: 'button', class: 'edit', onclick: () => tenantForm(detail, t, plans) }, 'Edit'),
                  h('button', { type: 'button', class: 'keys', onclick: () => keysPanel(detail, t).catch((e) => show(detail, 'error', e.message)) }, 'Keys'),
                  h('a', { class: 'button', href: `#/usage/${encodeURIComponent(t.id)}` }, 'Usage'),
                  h('button', { type: 'button', class: 'danger delete', onclick: () => deleteTenant(detail, t) }, 'Delete'),
                ),
              ),
            ),
          ),
        ),
      ),
      tenants.length ? '' : h('p', { class: 'muted' }, 'No tenants yet.'),
    ),
    detail,
  );
  const t = tenants.find((x) => x.id === selected);
  if (t && panel === 'keys') keysPanel(detail, t).catch((e) => show(detail, 'error', e.message));
  else if (t) tenantForm(detail, t, plans);
}

function tenantForm(detail, t, plans) {
  const error = h('div', { id: 'tenant-form-error' });
  const field = (name, label, kind, value) =>
    h('label', {}, label, kind === 'textarea' ? h('textarea', { id: `tf-${name}`, rows: '3', value }) : h('input', { id: `tf-${name}`, value }));
  const form = h(
    'form',
    {
      id: 'tenant-form',
      class: 'card',
      onsubmit: attempt(error, async () => {
        const saved = await saveTenant(t);
        await route();
        show('#tenant-detail', 'ok', `Saved ${saved.id} (version ${saved.version}).`);
      }),
    },
    h('h2', {}, t ? `Edit ${t.id}` : 'New tenant'),
    h(
      'div',
      { class: 'grid' },
      t ? '' : h('label', {}, 'Tenant id', h('input', { id: 'tf-id', required: true, placeholder: 'acme' })),
      h('label', {}, 'Plan', h('select', { id: 'tf-plan', value: t?.plan || plans[0]?.name }, plans.map((p) => h('option', { value: p.name }, p.name)))),
      LIMITS.map(([name, label]) =>
        h('label', {}, label, h('input', { id: `tf-${name}`, type: 'number', min: '0', placeholder: 'from the plan', value: t ? String(t.limits[name]) : '' })),
      ),
      TEXTS.filter(([, , kind]) => kind === 'input').map(([name, label, kind]) => field(name, label, kind, t?.[name] || '')),
    ),
    TEXTS.filter(([, , kind]) => kind === 'textarea').map(([name, label, kind]) => field(name, label, kind, t?.[name] || '')),
    field('quick_prompts', 'Quick prompts (one per line)', 'textarea', (t?.quick_prompts || []).join('\n')),
    h('div', { class: 'row', style: 'margin-top:8px' }, h('button', { id: 'tf-save', class: 'primary', type: 'submit' }, t ? 'Save changes' : 'Create tenant')),
    error,
  );
  detail.replaceChildren(form);
  form.scrollIntoView({ block: 'nearest' });
}

async function saveTenant(t) {
  const v = (name) => $(`#tf-${name}`).value;
  const prompts = v('quick_prompts').split('\n').map((s) => s.trim()).filter(Boolean);
  if (!t) {
    const limits = Object.fromEntries(LIMITS.map(([name]) => [name, Number(v(name) || 0)]));
    const body = { id: v('id').trim(), plan: v('plan'), limits, quick_prompts: prompts };
    TEXTS.forEach(([name]) => (body[name] = v(name)));
    // Limits left empty follow the plan.
    if (LIMITS.every(([name]) => !v(name))) delete body.limits;
    return api('/admin/v1/tenants', { method: 'POST', body });
  }
  const patch = {};
  if (v('plan') !== t.plan) patch.plan = v('plan');
  LIMITS.forEach(([name]) => {
    if (v(name) !== '' && Number(v(name)) !== Number(t.limits[name])) patch[name] = Number(v(name));
  });
  TEXTS.forEach(([name]) => {
    if (v(name) !== (t[name] || '')) patch[name] = v(name);
  });
  if (prompts.join('\n') !== (t.quick_prompts || []).join('\n')) patch.quick_prompts = prompts;
  return api(`/admin/v1/tenants/${encodeURIComponent(t.id)}`, { method: 'PATCH', body: patch });
}

async function deleteTenant(detail, t) {
  if (!confirm(`Delete tenant ${t.id}? Its keys stop working at once; its records are archived first.`)) return;
  await attempt(detail, async () => {
    const d = await api(`/admin/v1/tenants/${encodeURIComponent(t.id)}`, { method: 'DELETE' });
    await route();
    show('#tenant-detail', 'ok', `Deleted ${t.id}; archive written to ${d.archive_path}.`);
  })();
}

async function keysPanel(detail, t) {
  const { keys } = await api(`/admin/v1/tenants/${encodeURIComponent(t.id)}/keys`);
  const created = h('div', { id: 'new-key' });
  const error = h('div', { id: 'key-error' });
  detail.replaceChildren(
    h(
      'div',
      { class: 'card', id: 'keys-panel' },
      h('h2', {}, `API keys of ${t.display_name || t.id}`),
      h(
        'form',
        {
          class: 'row',
          onsubmit: attempt(error, async () => {
            const k = await api(`/admin/v1/tenants/${encodeURIComponent(t.id)}/keys`, { method: 'POST', body: { name: $('#key-name').value.trim() || 'console' } });
            await keysPanel(detail, t);
            $('#new-key').replaceChildren(
              alertBox('ok', `Key ${k.key.key_id} created. Copy it now: it is not shown again.`),
              h('div', { class: 'secret', id: 'new-key-secret' }, k.plaintext),
            );
          }),
        },
        h('label', {}, 'Key name', h('input', { id: 'key-name', placeholder: 'support-bot' })),
        h('button', { id: 'create-key', class: 'primary', type: 'submit' }, 'Create key'),
      ),
      created,
      error,
      h(
        'table',
        { id: 'keys-table' },
        h('thead', {}, h('tr', {}, ['Name', 'Key', 'Created', 'Last used', 'State', ''].map((x) => h('th', {}, x)))),
        h(
          'tbody',
          {},
          keys.map((k) =>
            h(
              'tr',
              { dataset: { key: k.key_id } },
              h('td', {}, k.name),
              h('td', {}, `${k.prefix}…`),
              h('td', {}, fmtTime(k.created_at_ms)),
              h('td', {}, fmtTime(k.last_used_at_ms)),
              h('td', {}, k.revoked_at_ms ? h('span', { class: 'pill failed' }, 'revoked') : h('span', { class: 'pill ready' }, 'active')),
              h(
                'td',
                {},
                k.revoked_at_ms
                  ? ''
                  : h(
                      'button',
                      {
                        type: 'button',
                        class: 'danger revoke',
                        onclick: attempt(error, async () => {
                          await api(`/admin/v1/keys/${encodeURIComponent(k.key_id)}`, { method: 'DELETE' });
                          await keysPanel(detail, t);
                        }),
                      },
                      'Revoke',
                    ),
              ),
            ),
          ),
        ),
      ),
    ),
  );
}

// ---------------------------------------------------------------------------
// Operator: usage

/** The first day of `day`'s bucket: itself, its ISO week's Monday, or its month's 1st. */
function bucketOf(day, granularity) {
  if (granularity === 'month') return `${day.slice(0, 7)}-01`;
  if (granularity === 'week') {
    const d = new Date(`${day}T00:00:00Z`);
    d.setUTCDate(d.getUTCDate() - ((d.getUTCDay() + 6) % 7));
    return isoDay(d);
  }
  return day;
}

const usageState = { granularity: 'day', chart: null };

async function viewUsage([tenantId]) {
  const live = alive();
  const { tenants } = await api('/admin/v1/tenants');
  if (!live()) return;
  if (!tenants.length) return page(h('h1', {}, 'Usage'), h('p', { class: 'muted' }, 'No tenants yet.'));
  const id = tenants.some((t) => t.id === tenantId) ? tenantId : tenants[0].id;
  const from = h('input', { id: 'usage-from', type: 'date', value: daysAgo(29) });
  const to = h('input', { id: 'usage-to', type: 'date', value: daysAgo(0) });
  const body = h('div', { id: 'usage-body' });
  const error = h('div', { id: 'usage-error' });
  const refresh = () => usageBody(body, error, id, from.value, to.value).catch((e) => show(error, 'error', e.message));
  page(
    h('h1', {}, 'Usage'),
    h(
      'div',
      { class: 'card row' },
      h('label', {}, 'Tenant', h('select', { id: 'usage-tenant', value: id, onchange: (e) => go(`#/usage/${encodeURIComponent(e.target.value)}`) }, tenants.map((t) => h('option', { value: t.id }, t.display_name || t.id)))),
      h('label', {}, 'From', from),
      h('label', {}, 'To', to),
      ['day', 'week', 'month'].map((g) =>
        h(
          'button',
          {
            type: 'button',
            id: `gran-${g}`,
            class: usageState.granularity === g ? 'primary' : '',
            onclick: () => {
              usageState.granularity = g;
              document.querySelectorAll('[id^=gran-]').forEach((b) => (b.className = b.id === `gran-${g}` ? 'primary' : ''));
              refresh();
            },
          },
          `By ${g}`,
        ),
      ),
      h('button', { id: 'usage-refresh', type: 'button', onclick: refresh }, 'Show'),
      h('button', { id: 'export-csv', type: 'button', onclick: () => exportCsv(error, id, from.value, to.value) }, 'Export CSV (de-identified)'),
    ),
    error,
    body,
  );
  await refresh();
}

async function usageBody(body, error, id, from, to) {
  error.replaceChildren();
  const q = new URLSearchParams({ from, to });
  const [range, today] = await Promise.all([
    api(`/admin/v1/tenants/${encodeURIComponent(id)}/usage?${q}`),
    api(`/admin/v1/tenants/${encodeURIComponent(id)}/usage?days=1`),
  ]);
  const now = today.days[today.days.length - 1] || { prompt_tokens: 0, completion_tokens: 0, quota: 0 };
  const used = now.prompt_tokens + now.completion_tokens;
  const requests = range.days.reduce((s, d) => s + d.requests, 0);
  const latency = range.days.reduce((s, d) => s + d.total_latency_ms, 0);
  const p95 = Math.max(0, ...range.days.filter((d) => d.requests).map((d) => d.p95_latency_ms));
  const tokens = range.days.reduce((s, d) => s + d.prompt_tokens + d.completion_tokens, 0);
  const share = now.quota ? Math.min(1, used / now.quota) : 0;
  const buckets = new Map();
  for (const d of range.days) {
    const k = bucketOf(d.day, usageState.granularity);
    const b = buckets.get(k) || { prompt: 0, completion: 0, requests: 0 };
    b.prompt += d.prompt_tokens;
    b.completion += d.completion_tokens;
    b.requests += d.requests;
    buckets.set(k, b);
  }
  const keys = [...buckets.keys()].sort();
  const chart = h('div', { id: 'usage-chart' });
  body.replaceChildren(
    h(
      'div',
      { class: 'grid' },
      h('div', { class: 'card', id: 'today-card' }, h('div', { class: 'muted' }, 'Tokens today'), h('div', { class: 'stat', id: 'today-used' }, fmtInt(used), h('small', {}, ` of ${fmtInt(now.quota)}`)), h('div', { class: `bar ${share >= 1 ? 'full' : ''}` }, h('div', { style: `width:${(share * 100).toFixed(1)}%` }))),
      h('div', { class: 'card' }, h('div', { class: 'muted' }, 'Tokens in range'), h('div', { class: 'stat', id: 'range-tokens' }, fmtInt(tokens)), h('small', { class: 'muted' }, `${fmtInt(requests)} requests`)),
      h('div', { class: 'card' }, h('div', { class: 'muted' }, 'Average latency'), h('div', { class: 'stat', id: 'avg-latency' }, requests ? `${Math.round(latency / requests)} ms` : '—')),
      h('div', { class: 'card' }, h('div', { class: 'muted' }, 'p95 latency (highest daily)'), h('div', { class: 'stat', id: 'p95-latency' }, requests ? `${p95} ms` : '—')),
    ),
    h('div', { class: 'card' }, h('h2', {}, `Tokens by ${usageState.granularity}`), chart, keys.length ? '' : h('p', { class: 'muted' }, 'No usage in this range.')),
    h(
      'div',
      { class: 'grid', style: 'grid-template-columns: 1fr 1fr' },
      h(
        'div',
        { class: 'card' },
        h('h2', {}, 'Most frequent prompts'),
        h('p', { class: 'muted' }, 'Operators only; the first 80 characters.'),
        table('top-prompts', ['Prompt', ['Count', 'num']], range.top_prompts.map((p) => [p.text, [fmtInt(p.count), 'num']])),
      ),
      h(
        'div',
        { class: 'card' },
        h('h2', {}, 'Per user'),
        table('user-totals', ['User', ['Tokens', 'num'], ['Requests', 'num']], range.users.map((u) => [u.user_id || '(none)', [fmtInt(u.tokens), 'num'], [fmtInt(u.requests), 'num']])),
      ),
    ),
    h(
      'div',
      { class: 'card' },
      h('h2', {}, 'By day'),
      table(
        'usage-days',
        ['Day', ['Prompt', 'num'], ['Completion', 'num'], ['Cached', 'num'], ['Requests', 'num'], ['Avg ms', 'num'], ['p95 ms', 'num'], ['Quota', 'num']],
        range.days
          .filter((d) => d.requests)
          .map((d) => [d.day, ...[d.prompt_tokens, d.completion_tokens, d.cached_tokens, d.requests, d.avg_latency_ms, d.p95_latency_ms, d.quota].map((n) => [fmtInt(n), 'num'])]),
      ),
    ),
  );
  drawChart(chart, keys, keys.map((k) => buckets.get(k)));
}

function table(id, heads, rows) {
  const cell = (tag, c) => (Array.isArray(c) ? h(tag, { class: c[1] }, c[0]) : h(tag, {}, c));
  return h(
    'table',
    { id },
    h('thead', {}, h('tr', {}, heads.map((c) => cell('th', c)))),
    h('tbody', {}, rows.length ? rows.map((r) => h('tr', {}, r.map((c) => cell('td', c)))) : h('tr', {}, h('td', { class: 'muted', colspan: String(heads.length) }, 'Nothing yet.'))),
  );
}

function drawChart(el, keys, values) {
  usageState.chart?.destroy();
  usageState.chart = null;
  if (!keys.length || typeof uPlot === 'undefined') return;
  const xs = keys.map((k) => Date.parse(`${k}T00:00:00Z`) / 1000);
  const span = { day: 86400, week: 7 * 86400, month: 30 * 86400 }[usageState.granularity];
  // Prompt and completion side by side in each bucket.
  const left = uPlot.paths.bars({ size: [0.35, 40], align: -1 });
  const right = uPlot.paths.bars({ size: [0.35, 40], align: 1 });
  usageState.chart = new uPlot(
    {
      width: Math.max(320, el.clientWidth || 900),
      height: 260,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1000), 'Etc/UTC'),
      scales: { x: { time: true, range: (u, min, max) => [min - span / 2, max + span / 2] } },
      series: [
        {},
        { label: 'Prompt tokens', stroke: '#2f6fde', fill: 'rgba(47,111,222,0.55)', paths: left, points: { show: false } },
        { label: 'Completion tokens', stroke: '#12b76a', fill: 'rgba(18,183,106,0.55)', paths: right, points: { show: false } },
      ],
      axes: [{}, { size: 70, values: (u, ticks) => ticks.map(fmtInt) }],
    },
    [xs, values.map((v) => v.prompt), values.map((v) => v.completion)],
    el,
  );
}

async function exportCsv(error, id, from, to) {
  error.replaceChildren();
  try {
    const q = new URLSearchParams({ from, to });
    const text = await api(`/admin/v1/tenants/${encodeURIComponent(id)}/usage/export?${q}`);
    const url = URL.createObjectURL(new Blob([text], { type: 'text/csv' }));
    const a = h('a', { href: url, download: `usage-${id}-${from}-to-${to}.csv`, id: 'csv-link' });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
    show(error, 'ok', `Exported ${Math.max(0, text.trim().split('\n').length - 1)} rows (users as keyed hashes, no text).`);
  } catch (e) {
    show(error, 'error', e.message);
  }
}

// ---------------------------------------------------------------------------
// Operator: live monitor

async function viewMonitor() {
  const body = h('div', { id: 'monitor-body' });
  page(h('h1', {}, 'Live monitor'), h('p', { class: 'muted' }, 'Asked of every worker every 2 seconds.'), body);
  const live = alive();
  const draw = async () => {
    let m;
    try {
      m = await api('/admin/v1/monitor');
    } catch (e) {
      if (live()) show(body, 'error', e.message);
      return;
    }
    if (!live()) return;
    const state = (s) => h('span', { class: `pill ${s.state}` }, s.state === 'loading' ? `loading ${pct(s.progress)}` : s.state);
    body.replaceChildren(
      h(
        'div',
        { class: 'card' },
        h('h2', {}, 'Tenants'),
        table(
          'monitor-tenants',
          ['Tenant', 'Model', ['Tokens today', 'num'], ['Active sessions', 'num'], ['In flight', 'num'], ['KV on device', 'num'], ['KV in host memory', 'num']],
          m.tenants.map((t) => [
            t.display_name || t.tenant_id,
            h('span', {}, `${t.model} `, state(t.model_status)),
            [t.tokens_today == null ? '–' : `${fmtInt(t.tokens_today)} of ${fmtInt(t.daily_quota)}`, 'num'],
            [fmtInt(t.active_sessions), 'num'],
            [fmtInt(t.in_flight), 'num'],
            [fmtBytes(t.kv_device_bytes), 'num'],
            [fmtBytes(t.kv_host_bytes), 'num'],
          ]),
        ),
      ),
      h(
        'div',
        { class: 'card' },
        h('h2', {}, 'Workers'),
        table(
          'monitor-workers',
          ['Worker', 'Models', ['Tokens/s', 'num'], ['Slots in use', 'num'], ['Generating', 'num'], ['Queued', 'num'], ['Host KV', 'num'], ['GPU memory', 'num']],
          m.workers.map((w) => [
            h('span', {}, w.worker_id, h('div', { class: 'muted' }, w.addr)),
            h('span', {}, w.models.join(', '), w.loading.map((l) => h('div', {}, `${l.model}: `, h('span', { class: 'pill loading' }, `loading ${pct(l.progress)}`)))),
            w.reachable ? [Number(w.tokens_per_second).toFixed(1), 'num'] : [h('span', { class: 'pill unavailable' }, w.error || 'unreachable'), 'num'],
            [w.reachable ? `${w.device_slots_used} / ${w.device_slots_total}` : '—', 'num'],
            [fmtInt(w.active_requests), 'num'],
            [fmtInt(w.queued_requests), 'num'],
            [fmtBytes(w.host_bytes), 'num'],
            [
              w.devices && w.devices.length
                ? h('span', { title: w.devices.map((d) => `${d.name}: ${d.description}`).join('\n') }, `${fmtBytes(w.vram_used_bytes)} / ${fmtBytes(w.vram_total_bytes)}`)
                : w.reachable ? 'CPU' : '—',
              'num',
            ],
          ]),
        ),
        m.workers.length ? '' : h('p', { class: 'muted' }, 'No worker is registered.'),
      ),
      h('p', { class: 'muted', id: 'monitor-at' }, `As of ${fmtTime(m.at_ms)}, from gateway ${m.gateway_id}.`),
    );
  };
  // The next poll starts 2 s after the last answer, so slow workers never
  // pile requests up.
  const poll = async () => {
    await draw();
    if (live()) timers.push(setTimeout(poll, 2000));
  };
  await poll();
}

// ---------------------------------------------------------------------------
// Operator: bursts, webhooks, audit

async function viewBursts() {
  const live = alive();
  const { bursts } = await api('/admin/v1/bursts');
  if (!live()) return;
  const error = h('div', { id: 'burst-error' });
  const decide = (b, verdict) =>
    attempt(error, async () => {
      await api(`/admin/v1/bursts/${encodeURIComponent(b.burst_id)}/${verdict}`, { method: 'POST', body: {} });
      await route();
    });
  page(
    h('h1', {}, 'Burst requests'),
    h('p', { class: 'muted' }, 'A tenant whose plan allows bursts may ask for more tokens for one day; an approval raises that day’s quota at once.'),
    error,
    h(
      'div',
      { class: 'card' },
      table(
        'bursts-table',
        ['Tenant', 'Day', 'Reason', ['Extra tokens', 'num'], 'Status', 'Requested', ''],
        bursts.map((b) => [
          b.tenant_id,
          b.day,
          b.reason,
          [fmtInt(b.extra_tokens), 'num'],
          h('span', { class: `pill ${b.status}` }, b.status),
          fmtTime(b.requested_at_ms),
          b.status === 'pending'
            ? h('span', { class: 'row' }, h('button', { type: 'button', class: 'primary approve', onclick: decide(b, 'approve') }, 'Approve'), h('button', { type: 'button', class: 'danger deny', onclick: decide(b, 'deny') }, 'Deny'))
            : b.decided_by || '',
        ]),
      ),
    ),
  );
}

async function viewWebhooks() {
  const live = alive();
  const [{ webhooks }, { deliveries }, { tenants }] = await Promise.all([
    api('/admin/v1/webhooks'),
    api('/admin/v1/webhooks/deliveries?limit=100'),
    api('/admin/v1/tenants'),
  ]);
  if (!live()) return;
  const error = h('div', { id: 'webhook-error' });
  page(
    h('h1', {}, 'Webhooks'),
    h(
      'form',
      {
        class: 'card row',
        id: 'webhook-form',
        onsubmit: attempt(error, async () => {
          const events = $('#wh-events').value.split(',').map((s) => s.trim()).filter(Boolean);
          const w = await api('/admin/v1/webhooks', { method: 'POST', body: { tenant_id: $('#wh-tenant').value, url: $('#wh-url').value.trim(), events } });
          await route();
          show('#webhook-error', 'ok', 'Endpoint added. Its signing secret (shown once): ', h('span', { class: 'secret', id: 'webhook-secret' }, w.secret));
        }),
      },
      h('label', {}, 'Tenant', h('select', { id: 'wh-tenant' }, h('option', { value: '' }, 'all tenants'), tenants.map((t) => h('option', { value: t.id }, t.id)))),
      h('label', { style: 'flex:1' }, 'URL', h('input', { id: 'wh-url', required: true, placeholder: 'https://billing.example/hooks' })),
      h('label', {}, 'Events (comma-separated; empty: all)', h('input', { id: 'wh-events', placeholder: 'quota.low, quota.exhausted' })),
      h('button', { class: 'primary', type: 'submit', id: 'wh-add' }, 'Add endpoint'),
    ),
    error,
    h(
      'div',
      { class: 'card' },
      h('h2', {}, 'Endpoints'),
      table(
        'webhooks-table',
        ['URL', 'Tenant', 'Events', 'Secret', 'Created', ''],
        webhooks.map((w) => [
          w.url,
          w.tenant_id || 'all tenants',
          w.events.length ? w.events.join(', ') : 'all',
          `${w.secret_prefix}…`,
          fmtTime(w.created_at_ms),
          h(
            'button',
            {
              type: 'button',
              class: 'danger',
              onclick: attempt(error, async () => {
                await api(`/admin/v1/webhooks/${encodeURIComponent(w.webhook_id)}`, { method: 'DELETE' });
                await route();
              }),
            },
            'Remove',
          ),
        ]),
      ),
    ),
    h(
      'div',
      { class: 'card' },
      h('h2', {}, 'Delivery log'),
      table(
        'deliveries-table',
        ['Event', 'Tenant', 'URL', 'State', 'Attempts', 'Created'],
        deliveries.map((d) => [
          d.event_type,
          d.tenant_id || '—',
          d.url,
          h('span', { class: `pill ${d.state}` }, d.state),
          d.attempts.map((a) => `${a.status || 'error'} ${a.latency_ms} ms${a.error ? ` (${a.error})` : ''}`).join('; ') || 'none yet',
          fmtTime(d.created_at_ms),
        ]),
      ),
    ),
  );
}

async function viewAudit([tenantId]) {
  const live = alive();
  const { tenants } = await api('/admin/v1/tenants');
  const ids = ['_cluster', ...tenants.map((t) => t.id)];
  const id = ids.includes(tenantId) ? tenantId : tenants[0]?.id || '_cluster';
  const { records } = await api(`/admin/v1/tenants/${encodeURIComponent(id)}/audit?limit=500`);
  if (!live()) return;
  const verdict = h('div', { id: 'audit-verdict' });
  page(
    h('h1', {}, 'Audit trail'),
    h(
      'div',
      { class: 'card row' },
      h('label', {}, 'Chain', h('select', { id: 'audit-tenant', value: id, onchange: (e) => go(`#/audit/${encodeURIComponent(e.target.value)}`) }, ids.map((x) => h('option', { value: x }, x === '_cluster' ? 'cluster-wide' : x)))),
      h(
        'button',
        {
          type: 'button',
          id: 'audit-verify',
          onclick: async () => {
            try {
              const v = await api('/admin/v1/audit/verify');
              if (v.ok) show(verdict, 'ok', `All ${v.chains} chains hold (${fmtInt(v.records)} records).`);
              else show(verdict, 'error', `Broken: ${v.broken_tenant} at record ${v.broken_seq}: ${v.reason}`);
            } catch (e) {
              show(verdict, 'error', e.message);
            }
          },
        },
        'Verify every chain',
      ),
    ),
    verdict,
    h(
      'div',
      { class: 'card' },
      table('audit-table', [['#', 'num'], 'Time', 'Actor', 'Action', 'Detail'], records.map((r) => [[String(r.seq), 'num'], fmtTime(r.at_ms), r.actor, r.action, r.detail])),
    ),
  );
}

// ---------------------------------------------------------------------------

$('#sign-out').addEventListener('click', signOut);
setLang(lang);
window.addEventListener('hashchange', route);
route();
