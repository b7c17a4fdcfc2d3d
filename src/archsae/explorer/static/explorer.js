// Image page: clicking a token of the grid lists its concepts (data embedded in the page, no round trip).
document.addEventListener("DOMContentLoaded", () => {
  const grid = document.querySelector(".tokens .grid");
  if (!grid) return;
  const out = document.getElementById("token-concepts");
  const base = grid.dataset.conceptUrl;
  grid.addEventListener("click", (event) => {
    const cell = event.target.closest("button");
    if (!cell) return;
    grid.querySelectorAll("button.on").forEach((b) => b.classList.remove("on"));
    cell.classList.add("on");
    const concepts = JSON.parse(cell.dataset.concepts);
    const title = document.createElement("h3");
    const active = Number(cell.dataset.active);
    title.textContent = `token (${cell.dataset.row}, ${cell.dataset.col}): ` +
      (active > concepts.length ? `the ${concepts.length} largest of ${active} active concepts` : `${active} active concepts`);
    const list = document.createElement("ol");
    list.id = "token-list";
    for (const [index, value] of concepts) {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = base.replace("CONCEPT", index);
      link.textContent = `concept ${index}`;
      link.dataset.concept = index;
      item.append(link, ` — activation ${value}`);
      list.append(item);
    }
    out.replaceChildren(title, list);
  });
});
