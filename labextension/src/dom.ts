// Small DOM helpers: the views are plain elements styled by style/base.css and the theme's variables.

type Child = Node | string | number | null | undefined | false;

/** An element with attributes (class, title, data-*, on* handlers) and children. */
export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Record<string, any> = {},
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) {
      continue;
    }
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2).toLowerCase(), v);
    } else if (k === 'class') {
      el.className = String(v);
    } else if (k === 'value') {
      (el as any).value = v;
    } else if (k === 'checked') {
      (el as any).checked = !!v;
    } else {
      el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, ...children);
  return el;
}

export function append(el: Element, ...children: Child[]): void {
  for (const c of children) {
    if (c === null || c === undefined || c === false) {
      continue;
    }
    el.appendChild(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replace an element's children. */
export function fill(el: Element, ...children: Child[]): void {
  el.textContent = '';
  append(el, ...children);
}

/** A number for a table cell: 4 significant digits, integers as they are. */
export function fmt(v: unknown): string {
  if (typeof v !== 'number' || !isFinite(v)) {
    return v === null || v === undefined ? '' : String(v);
  }
  if (Number.isInteger(v)) {
    return String(v);
  }
  const a = Math.abs(v);
  return a !== 0 && (a < 1e-3 || a >= 1e5) ? v.toExponential(3) : v.toPrecision(4);
}

/** A local date and time from an ISO string or seconds since the epoch. */
export function when(v: string | number | null | undefined): string {
  if (v === null || v === undefined || v === '') {
    return '';
  }
  const d = typeof v === 'number' ? new Date(v * 1000) : new Date(v);
  if (isNaN(d.getTime())) {
    return String(v);
  }
  const pad = (n: number) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** A message line: "error" or "info". */
export function note(text: string, kind: 'error' | 'info' = 'info'): HTMLElement {
  return h('div', { class: `m4h-note m4h-note-${kind}` }, text);
}
