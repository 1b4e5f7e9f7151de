# The file_parse tool, run by the gateway in the sandbox (no network, a
# read-only /usr): prints the text of one uploaded file. Its arguments are
# in bulkhead-args.json: {"file": <name in /work>, "max_chars": N}.
# CSV and TSV through the csv module, XLSX from its XML (zipfile and
# ElementTree: no third-party code), PDF through poppler's pdftotext.
import csv
import json
import subprocess
import sys
import zipfile
import xml.etree.ElementTree as ET

NS = {"m": "http://schemas.openxmlformats.org/spreadsheetml/2006/main"}
REL = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}id"


def table(rows):
    return "\n".join("\t".join("" if c is None else str(c) for c in row) for row in rows)


def xlsx(path):
    out = []
    with zipfile.ZipFile(path) as z:
        names = set(z.namelist())
        shared = []
        if "xl/sharedStrings.xml" in names:
            for si in ET.fromstring(z.read("xl/sharedStrings.xml")).findall("m:si", NS):
                shared.append("".join(t.text or "" for t in si.iter("{%s}t" % NS["m"])))
        book = ET.fromstring(z.read("xl/workbook.xml"))
        rels = ET.fromstring(z.read("xl/_rels/workbook.xml.rels"))
        targets = {r.get("Id"): r.get("Target") for r in rels}
        for sheet in book.findall("m:sheets/m:sheet", NS):
            target = targets.get(sheet.get(REL), "")
            target = target.lstrip("/")
            if not target.startswith("xl/"):
                target = "xl/" + target
            if target not in names:
                continue
            rows = []
            for row in ET.fromstring(z.read(target)).iter("{%s}row" % NS["m"]):
                cells = []
                for c in row.findall("m:c", NS):
                    kind, v = c.get("t"), c.find("m:v", NS)
                    if kind == "s" and v is not None:
                        cells.append(shared[int(v.text)])
                    elif kind == "inlineStr":
                        cells.append("".join(t.text or "" for t in c.iter("{%s}t" % NS["m"])))
                    else:
                        cells.append(v.text if v is not None else "")
                rows.append(cells)
            out.append("# sheet %s\n%s" % (sheet.get("name"), table(rows)))
    return "\n\n".join(out)


def main():
    args = json.load(open("bulkhead-args.json"))
    name, limit = args["file"], int(args.get("max_chars") or 20000)
    ext = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    if ext == "pdf":
        run = subprocess.run(["pdftotext", "-layout", "-enc", "UTF-8", name, "-"],
                             capture_output=True)
        if run.returncode != 0:
            sys.exit("not a readable PDF: " + run.stderr.decode(errors="replace").strip())
        text = run.stdout.decode("utf-8", errors="replace")
    elif ext in ("xlsx", "xlsm"):
        try:
            text = xlsx(name)
        except (zipfile.BadZipFile, KeyError, ET.ParseError) as e:
            sys.exit("not a readable XLSX workbook: %s" % e)
    elif ext in ("csv", "tsv"):
        with open(name, newline="", encoding="utf-8", errors="replace") as f:
            text = table(csv.reader(f, delimiter="\t" if ext == "tsv" else ","))
    else:
        with open(name, "rb") as f:
            raw = f.read()
        if b"\0" in raw[:4096]:
            sys.exit("%s is a binary file; file_parse reads CSV, TSV, XLSX, PDF and text" % name)
        text = raw.decode("utf-8", errors="replace")
    if len(text) > limit:
        text = text[:limit] + "\n… (cut at %d of %d characters)" % (limit, len(text))
    print(text)


main()
