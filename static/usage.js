/* The /usage page: sends the pasted key to GET /api/usage in the Authorization header
   (never in the URL), keeps it only in the input box (no cookies, no localStorage), and
   renders the answer with textContent so nothing from the server is parsed as HTML. */
(function () {
  "use strict";
  var form = document.getElementById("usage-form");
  var input = document.getElementById("usage-key");
  var errorBox = document.getElementById("usage-error");
  var result = document.getElementById("usage-result");
  var number = new Intl.NumberFormat();

  function fmt(value) { return value === null || value === undefined ? "—" : number.format(value); }
  function when(iso) { return iso ? new Date(iso).toLocaleString() : "never"; }
  function set(name, text) {
    result.querySelectorAll('[data-field="' + name + '"]').forEach(function (el) { el.textContent = text; });
  }
  function row(cells) {
    var tr = document.createElement("tr");
    cells.forEach(function (cell) {
      var td = document.createElement("td");
      td.setAttribute("data-label", cell[0]);
      if (cell[1] instanceof Node) { td.appendChild(cell[1]); } else { td.textContent = cell[1]; }
      tr.appendChild(td);
    });
    return tr;
  }
  function miniBar(value, peak) {
    var bar = document.createElement("div");
    bar.className = "bar mini";
    var fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = (peak ? Math.round(value * 100 / peak) : 0) + "%";
    bar.appendChild(fill);
    return bar;
  }
  function showError(message) {
    errorBox.textContent = message;
    errorBox.hidden = false;
    result.hidden = true;
  }

  function render(data) {
    errorBox.hidden = true;
    set("owner", data.owner);
    set("tier", data.tier);
    set("status", data.status);
    document.getElementById("usage-status").className = "badge key-" + data.status;
    set("used", fmt(data.used) + " tokens");
    set("remaining", data.remaining === null ? "unlimited" : fmt(data.remaining) + " tokens");
    set("quota", data.quota === null ? "unlimited" : fmt(data.quota) + " tokens " +
        (data.period === "total" ? "in total (account-wide)" : data.period === "daily" ? "per day" : "per month"));
    set("period_end", data.period_end ? when(data.period_end) : "never (one-off quota)");
    set("requests", fmt(data.requests) + (data.request_quota === null ? "" : " of " + fmt(data.request_quota)));
    set("rpm_limit", fmt(data.rpm_limit) + " requests per minute");
    set("key", data.key + (data.label ? " (" + data.label + ")" : ""));
    set("last_used_at", when(data.last_used_at));

    var percent = data.percent === null ? 0 : data.percent;
    var fill = document.getElementById("usage-fill");
    fill.style.width = percent + "%";
    fill.className = "fill" + (percent >= 100 ? " full" : percent >= 80 ? " warn" : "");
    document.getElementById("usage-bar").setAttribute("aria-valuenow", String(percent));
    document.getElementById("usage-summary").textContent = data.percent === null
      ? "No token limit."
      : percent + "% used, " + fmt(data.remaining) + " tokens remaining.";

    var models = document.querySelector("#usage-models tbody");
    models.replaceChildren();
    data.models.forEach(function (m) {
      models.appendChild(row([["Model", m.model], ["Requests", fmt(m.requests)],
                              ["Tokens in", fmt(m.tokens_in)], ["Tokens out", fmt(m.tokens_out)]]));
    });
    if (!data.models.length) { models.appendChild(row([["Model", "No requests this period"]])); }

    var daily = document.querySelector("#usage-daily tbody");
    daily.replaceChildren();
    var peak = Math.max.apply(null, data.daily.map(function (d) { return d.tokens; }).concat([0]));
    data.daily.slice().reverse().forEach(function (d) {
      daily.appendChild(row([["Day", d.date], ["Requests", fmt(d.requests)], ["Tokens", fmt(d.tokens)],
                             ["", miniBar(d.tokens, peak)]]));
    });
    result.hidden = false;
  }

  document.getElementById("usage-show").addEventListener("change", function (event) {
    input.type = event.target.checked ? "text" : "password";
  });

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var key = input.value.trim();
    if (!key) { showError("Paste your key first."); return; }
    fetch("/api/usage", {
      headers: { "Authorization": "Bearer " + key, "Accept": "application/json" },
      cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer"
    }).then(function (response) {
      if (response.status === 401) { showError("That key is not valid. Check that you pasted all of it."); return null; }
      if (response.status === 429) { showError("Too many checks from your address; wait a minute and retry."); return null; }
      if (!response.ok) { showError("The gateway could not answer (HTTP " + response.status + ")."); return null; }
      return response.json();
    }).then(function (data) { if (data) { render(data); } },
      function () { showError("Could not reach the gateway."); });
  });
})();
