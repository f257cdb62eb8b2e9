// rlhfkit label server: the pages' behaviour. Vanilla JS, no build step. Text from people and models is only
// ever set with textContent (the server escaped it already in the HTML); nothing here builds HTML from strings.
"use strict";

(function () {
  const $ = (selector, root = document) => root.querySelector(selector);
  const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));
  const csrf = () => $('meta[name="csrf-token"]').content;
  let busy = false;

  function say(text, bad = false) {
    const el = $("#status");
    el.textContent = text;
    el.className = bad ? "bad" : "";
  }

  // POST JSON; resolves with the answer's JSON, rejects with a message a person can act on.
  async function post(url, body, token) {
    let response;
    try {
      response = await fetch(url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "Content-Type": "application/json", "X-CSRF-Token": token || csrf() },
        body: JSON.stringify(body || {}),
      });
    } catch (err) {
      throw new Error("the server did not answer, so nothing was saved: try again");
    }
    let data;
    try {
      data = await response.json();
    } catch (err) {
      data = { error: response.status === 413 ? "too long: the server takes at most its body limit" : `error ${response.status}` };
    }
    if (!response.ok) throw new Error(data.error || `error ${response.status}`);
    return data;
  }

  // Send a label; move on only once the server said it is stored.
  async function submit(body) {
    if (busy) return;
    busy = true;
    say("saving…");
    try {
      const data = await post(`/api/items/${$(".task").dataset.item}/label`, body);
      say("saved");
      window.location.assign(data.next);
    } catch (err) {
      say(`not saved: ${err.message}`, true);
      busy = false;
    }
  }

  async function skip() {
    if (busy) return;
    busy = true;
    try {
      const data = await post(`/api/items/${$(".task").dataset.item}/skip`, {});
      window.location.assign(data.next);
    } catch (err) {
      say(err.message, true);
      busy = false;
    }
  }

  function typing(event) {
    const tag = event.target.tagName;
    return tag === "INPUT" || tag === "TEXTAREA" || event.target.isContentEditable;
  }

  function initLogin() {
    const form = $("#login");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        const data = await post("/api/login", { token: $("#token").value }, form.dataset.csrf);
        window.location.assign(data.next);
      } catch (err) {
        say(err.message, true);
      }
    });
  }

  function initWrite() {
    const answer = $("#answer");
    const send = () => {
      if (!answer.value.trim()) {
        say("write the answer first", true);
        return;
      }
      submit({ text: answer.value });
    };
    $("#submit").addEventListener("click", send);
    answer.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
        event.preventDefault();
        send();
      }
    });
    answer.focus();
  }

  // Ranking: each answer has a rank (1 = best, equal = tie) or is flagged unacceptable. The list is always shown
  // in rank order: ranked answers first, then the unranked, then the flagged ones.
  function initRank() {
    const task = $(".task");
    const list = $("#ranking");
    const k = Number(task.dataset.k);
    const state = new Map($$(".answer", list).map((card) => [card, { rank: null, flagged: false }]));
    let dragged = null;

    function position(card) {
      const s = state.get(card);
      return s.flagged ? 2 * k + 2 : s.rank === null ? k + 1 : s.rank;
    }

    function render() {
      const focused = document.activeElement;
      const order = $$(".answer", list);
      order.sort((a, b) => position(a) - position(b)); // stable: ties keep their order on the page
      for (const card of order) list.appendChild(card);
      for (const card of order) {
        const s = state.get(card);
        $(".rank", card).textContent = s.flagged ? "✗" : s.rank === null ? "–" : String(s.rank);
        $(".unacceptable", card).checked = s.flagged;
        card.classList.toggle("flagged", s.flagged);
        card.classList.toggle("ranked", s.rank !== null);
      }
      if (focused && list.contains(focused)) focused.focus();
    }

    function setRank(card, rank) {
      Object.assign(state.get(card), { rank, flagged: false });
      render();
    }

    function toggleFlag(card) {
      const s = state.get(card);
      Object.assign(s, { flagged: !s.flagged, rank: null });
      render();
    }

    // After a drop the order on the page is the ranking; answers that were tied and are still side by side
    // stay tied, the moved one is tied with none.
    function ranksFromOrder() {
      const before = new Map(Array.from(state, ([card, s]) => [card, s.rank]));
      let rank = 0;
      let previous = null;
      for (const card of $$(".answer", list)) {
        const s = state.get(card);
        if (s.flagged) continue;
        const tied =
          previous !== null && card !== dragged && previous !== dragged &&
          before.get(card) !== null && before.get(card) === before.get(previous);
        if (!tied) rank += 1;
        s.rank = rank;
        previous = card;
      }
    }

    for (const card of state.keys()) {
      card.addEventListener("dragstart", (event) => {
        dragged = card;
        card.classList.add("dragging");
        event.dataTransfer.effectAllowed = "move";
        event.dataTransfer.setData("text/plain", card.dataset.index);
      });
      card.addEventListener("dragend", () => {
        card.classList.remove("dragging");
        $$(".drop-before, .drop-after", list).forEach((c) => c.classList.remove("drop-before", "drop-after"));
        dragged = null;
      });
      card.addEventListener("dragover", (event) => {
        if (!dragged || dragged === card) return;
        event.preventDefault();
        const box = card.getBoundingClientRect();
        const above = event.clientY < box.top + box.height / 2;
        card.classList.toggle("drop-before", above);
        card.classList.toggle("drop-after", !above);
      });
      card.addEventListener("dragleave", () => card.classList.remove("drop-before", "drop-after"));
      card.addEventListener("drop", (event) => {
        event.preventDefault();
        if (!dragged || dragged === card) return;
        const box = card.getBoundingClientRect();
        list.insertBefore(dragged, event.clientY < box.top + box.height / 2 ? card : card.nextSibling);
        card.classList.remove("drop-before", "drop-after");
        state.get(dragged).flagged = false; // moved among the ranked answers: no longer flagged
        ranksFromOrder();
        render();
      });
      $(".unacceptable", card).addEventListener("change", () => toggleFlag(card));
      card.addEventListener("keydown", (event) => {
        if (event.ctrlKey || event.metaKey || event.altKey) return;
        const digit = Number(event.key);
        if (Number.isInteger(digit) && digit >= 1 && digit <= k) {
          event.preventDefault();
          setRank(card, digit);
          // On to the next answer still to rank, so that ranks can be typed one after another.
          const next = $$(".answer", list).find((c) => state.get(c).rank === null && !state.get(c).flagged);
          if (next) next.focus();
        } else if (event.key === "x" || event.key === "X") {
          event.preventDefault();
          toggleFlag(card);
        } else if (event.key === "ArrowDown" || event.key === "ArrowUp") {
          event.preventDefault();
          const sibling = event.key === "ArrowDown" ? card.nextElementSibling : card.previousElementSibling;
          if (sibling) sibling.focus();
        }
      });
    }

    function send() {
      const cards = Array.from(state.keys());
      const missing = cards.filter((card) => !state.get(card).flagged && state.get(card).rank === null);
      if (missing.length) {
        say(`rank every answer or flag it unacceptable (${missing.length} left)`, true);
        missing[0].focus();
        return;
      }
      const ranks = new Array(k).fill(null);
      const unacceptable = new Array(k).fill(false);
      for (const [card, s] of state) {
        const i = Number(card.dataset.index);
        ranks[i] = s.flagged ? null : s.rank;
        unacceptable[i] = s.flagged;
      }
      submit({ ranks, unacceptable });
    }

    $("#submit").addEventListener("click", send);
    document.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !typing(event) && event.target.tagName !== "BUTTON") {
        event.preventDefault();
        send();
      }
    });
    render();
    $(".answer", list).focus();
  }

  function initCompare() {
    for (const button of $$(".choice")) {
      button.addEventListener("click", () => submit({ choice: button.dataset.choice }));
    }
    const keys = { a: "a", t: "tie", b: "b" };
    document.addEventListener("keydown", (event) => {
      if (typing(event) || event.ctrlKey || event.metaKey || event.altKey || event.repeat) return;
      const choice = keys[event.key.toLowerCase()];
      if (choice) {
        event.preventDefault();
        submit({ choice });
      }
    });
  }

  function initAdmin() {
    const form = $("#add-person");
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        const data = await post("/api/admin/users", { name: $("#person-name").value, admin: $("#person-admin").checked });
        const shown = $("#new-token");
        $(".token-name", shown).textContent = data.name;
        $(".token-value", shown).textContent = data.token;
        shown.hidden = false;
        const row = $("#people tbody").insertRow();
        row.insertCell().textContent = data.name;
        row.insertCell().textContent = data.role;
        form.reset();
        say(`added ${data.name}`);
      } catch (err) {
        say(err.message, true);
      }
    });
  }

  document.addEventListener("DOMContentLoaded", () => {
    const logout = $("#logout");
    if (logout) {
      logout.addEventListener("click", async () => {
        try {
          await post("/api/logout", {});
        } finally {
          window.location.assign("/login");
        }
      });
    }
    const skipButton = $("#skip");
    if (skipButton) skipButton.addEventListener("click", skip);
    const init = { login: initLogin, write: initWrite, rank: initRank, compare: initCompare, admin: initAdmin };
    const page = document.body.dataset.page;
    if (init[page]) init[page]();
  });
})();
