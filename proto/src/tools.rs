//! OpenAI tool calling: the functions a request offers (`tools`), which of
//! them the model must call (`tool_choice`), and the model's calls read out
//! of its text as it streams.
//!
//! The model writes a call the way Hermes and Qwen templates teach it:
//!
//! ```text
//! <tool_call>
//! {"name": "get_weather", "arguments": {"city": "Paris"}}
//! </tool_call>
//! ```
//!
//! Llama 3.x's `{"name": ..., "parameters": ...}` object is read too, when
//! it is the whole answer.

use serde_json::{Value, json};

use crate::worker as pb;

/// The most tools one request may offer (OpenAI's own limit).
pub const MAX_TOOLS: usize = 128;
/// Where a call starts and ends in the model's text.
pub const CALL_OPEN: &str = "<tool_call>";
pub const CALL_CLOSE: &str = "</tool_call>";

/// The server-side tools: a request offers one as `{"type": "code_run"}`,
/// and for a tenant whose plan (or config) allows it the gateway runs the
/// model's calls of it in a sandbox and gives the model the result.
pub const SERVER_TOOLS: &[&str] = &["code_run", "file_parse", "sql_query"];

/// The function the model sees for a server-side tool.
pub fn server_tool(name: &str) -> Option<Tool> {
    match name {
        "code_run" => Some(Tool {
            name: "code_run".into(),
            description: "Runs Python 3 code in a sandbox with no network and gives back what it printed. Files it writes in its working directory are given to the user to download. Use it to compute, and to make files such as CSV spreadsheets.".into(),
            parameters: json!({
                "type": "object",
                "properties": {"code": {"type": "string", "description": "The Python 3 program to run."}},
                "required": ["code"],
            }),
        }),
        "file_parse" => Some(Tool {
            name: "file_parse".into(),
            description: "Extracts the text of a file the user uploaded (CSV, XLSX, PDF or plain text) and gives it back, cut at max_chars.".into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "file": {"type": "string", "description": "The file's id (file-…) or name."},
                    "max_chars": {"type": "integer", "description": "The most characters to give back (default 20000)."},
                },
                "required": ["file"],
            }),
        }),
        "sql_query" => Some(Tool {
            name: "sql_query".into(),
            description: "Runs one read-only SQL query on an SQLite database file the user uploaded and gives back the columns and rows as JSON (at most 200 rows). `SELECT name FROM sqlite_master` lists its tables.".into(),
            parameters: json!({
                "type": "object",
                "properties": {
                    "database": {"type": "string", "description": "The database file's id (file-…) or name."},
                    "query": {"type": "string", "description": "One SQL statement (SELECT, WITH or read-only PRAGMA)."},
                },
                "required": ["database", "query"],
            }),
        }),
        _ => None,
    }
}

/// What a request offers: its functions, which of them the model must
/// call, and the server-side tools it asks for.
#[derive(Debug, Clone, PartialEq)]
pub struct Offered {
    pub tools: Vec<Tool>,
    pub choice: ToolChoice,
    pub server: Vec<String>,
}

/// A function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Tool {
    pub name: String,
    pub description: String,
    /// The JSON Schema of its arguments.
    pub parameters: Value,
}

impl Tool {
    /// OpenAI's form: `{"type": "function", "function": {...}}`.
    pub fn to_openai(&self) -> Value {
        let mut function = json!({"name": self.name, "parameters": self.parameters});
        if !self.description.is_empty() {
            function["description"] = json!(self.description);
        }
        json!({"type": "function", "function": function})
    }
}

impl From<&Tool> for pb::Tool {
    fn from(t: &Tool) -> Self {
        Self {
            name: t.name.clone(),
            description: t.description.clone(),
            parameters_json: t.parameters.to_string(),
        }
    }
}

impl TryFrom<&pb::Tool> for Tool {
    type Error = String;

    fn try_from(t: &pb::Tool) -> Result<Self, String> {
        let parameters = if t.parameters_json.is_empty() {
            no_parameters()
        } else {
            serde_json::from_str(&t.parameters_json)
                .map_err(|e| format!("tool `{}`: parameters are not JSON: {e}", t.name))?
        };
        let tool = Self {
            name: t.name.clone(),
            description: t.description.clone(),
            parameters,
        };
        check_tool(&tool)?;
        Ok(tool)
    }
}

fn no_parameters() -> Value {
    json!({"type": "object", "properties": {}})
}

/// Which tool the model must call.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ToolChoice {
    /// The model decides (OpenAI's default when tools are given).
    #[default]
    Auto,
    /// No call: the tools are not shown to the model.
    None,
    /// At least one call, of any of the tools.
    Required,
    /// A call of this function.
    Function(String),
}

impl ToolChoice {
    /// The wire form: (`tool_choice`, `tool_choice_name`).
    pub fn to_wire(&self) -> (String, String) {
        match self {
            Self::Auto => ("auto".into(), String::new()),
            Self::None => ("none".into(), String::new()),
            Self::Required => ("required".into(), String::new()),
            Self::Function(name) => ("function".into(), name.clone()),
        }
    }

    pub fn from_wire(choice: &str, name: &str) -> Result<Self, String> {
        match choice {
            "" | "auto" => Ok(Self::Auto),
            "none" => Ok(Self::None),
            "required" => Ok(Self::Required),
            "function" if !name.is_empty() => Ok(Self::Function(name.to_owned())),
            other => Err(format!(
                "tool_choice must be auto, none, required or a function, got {other:?}"
            )),
        }
    }

    /// Whether the model must call a tool.
    pub fn forces_a_call(&self) -> bool {
        matches!(self, Self::Required | Self::Function(_))
    }
}

fn check_tool(tool: &Tool) -> Result<(), String> {
    let name_ok = !tool.name.is_empty()
        && tool.name.len() <= 64
        && tool
            .name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !name_ok {
        return Err(format!(
            "a tool's name must be 1 to 64 letters, digits, underscores or dashes, got {:?}",
            tool.name
        ));
    }
    if !tool.parameters.is_object() {
        return Err(format!(
            "tool `{}`: parameters must be a JSON Schema object",
            tool.name
        ));
    }
    Ok(())
}

/// Reads a request's `tools` and `tool_choice`. The error is a message and
/// the field it is about.
pub fn parse(
    tools: Option<&[Value]>,
    choice: Option<&Value>,
) -> Result<Offered, (String, &'static str)> {
    let bad = |message: String| (message, "tools");
    let raw = tools.unwrap_or_default();
    if raw.len() > MAX_TOOLS {
        return Err(bad(format!("at most {MAX_TOOLS} tools may be given")));
    }
    let mut out: Vec<Tool> = Vec::with_capacity(raw.len());
    let mut server: Vec<String> = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        match t.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(kind) if SERVER_TOOLS.contains(&kind) => {
                if !server.iter().any(|s| s == kind) {
                    server.push(kind.to_owned());
                }
                continue;
            }
            _ => {
                return Err(bad(format!(
                    "tools[{i}].type must be \"function\" or a server-side tool ({})",
                    SERVER_TOOLS.join(", ")
                )));
            }
        }
        let Some(f) = t.get("function").filter(|f| f.is_object()) else {
            return Err(bad(format!("tools[{i}].function must be an object")));
        };
        let name = f.get("name").and_then(Value::as_str).unwrap_or_default();
        let description = match f.get("description") {
            None | Some(Value::Null) => String::new(),
            Some(Value::String(d)) => d.clone(),
            Some(_) => {
                return Err(bad(format!(
                    "tools[{i}].function.description must be a string"
                )));
            }
        };
        let tool = Tool {
            name: name.to_owned(),
            description,
            parameters: match f.get("parameters") {
                None | Some(Value::Null) => no_parameters(),
                Some(p) => p.clone(),
            },
        };
        check_tool(&tool).map_err(|e| bad(format!("tools[{i}]: {e}")))?;
        if out.iter().any(|o| o.name == tool.name) || SERVER_TOOLS.contains(&name) {
            return Err(bad(format!(
                "tools[{i}]: the name `{name}` is given twice (or is a server-side tool's)"
            )));
        }
        out.push(tool);
    }
    let choice_err = |message: String| (message, "tool_choice");
    let choice = match choice {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "auto" => ToolChoice::Auto,
            "none" => ToolChoice::None,
            "required" => ToolChoice::Required,
            other => {
                return Err(choice_err(format!(
                    "tool_choice must be \"auto\", \"none\", \"required\" or {{\"type\": \"function\", \"function\": {{\"name\": ...}}}}, got {other:?}"
                )));
            }
        },
        Some(v) => {
            let name = v
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .filter(|_| v.get("type").and_then(Value::as_str) == Some("function"))
                .ok_or_else(|| {
                    choice_err(
                        "tool_choice must be {\"type\": \"function\", \"function\": {\"name\": ...}} when it is an object".into(),
                    )
                })?;
            if !out.iter().any(|t| t.name == name) && !server.iter().any(|s| s == name) {
                return Err(choice_err(format!(
                    "tool_choice names the function `{name}`, which is not among the request's tools"
                )));
            }
            ToolChoice::Function(name.to_owned())
        }
    };
    if choice == ToolChoice::Required && out.is_empty() && server.is_empty() {
        return Err(choice_err(
            "tool_choice is \"required\" but the request gives no tools".into(),
        ));
    }
    Ok(Offered {
        tools: out,
        choice,
        server,
    })
}

/// One call of a tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    /// JSON text.
    pub arguments: String,
}

impl ToolCall {
    /// OpenAI's form, in a message's `tool_calls`.
    pub fn to_openai(&self) -> Value {
        json!({
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        })
    }

    /// Reads one of a message's `tool_calls` as a client sends it back.
    pub fn from_openai(v: &Value) -> Result<Self, String> {
        let f = v
            .get("function")
            .ok_or("a tool call needs a `function` object")?;
        let name = f
            .get("name")
            .and_then(Value::as_str)
            .ok_or("a tool call's function needs a `name`")?;
        let arguments = match f.get("arguments") {
            None | Some(Value::Null) => "{}".to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        Ok(Self {
            id: v
                .get("id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            name: name.to_owned(),
            arguments,
        })
    }

    /// The arguments as a JSON value (an object as the template expects;
    /// text that is not JSON stays a string).
    pub fn arguments_value(&self) -> Value {
        serde_json::from_str(&self.arguments).unwrap_or_else(|_| json!(self.arguments))
    }

    /// How the model writes this call (the format the parser reads).
    pub fn to_text(&self) -> String {
        // Name first, as the models write it.
        let (name, arguments) = (json!(self.name), self.arguments_value());
        format!("{CALL_OPEN}\n{{\"name\": {name}, \"arguments\": {arguments}}}\n{CALL_CLOSE}")
    }
}

impl From<&ToolCall> for pb::ToolCall {
    fn from(c: &ToolCall) -> Self {
        Self {
            id: c.id.clone(),
            name: c.name.clone(),
            arguments: c.arguments.clone(),
        }
    }
}

impl From<&pb::ToolCall> for ToolCall {
    fn from(c: &pb::ToolCall) -> Self {
        Self {
            id: c.id.clone(),
            name: c.name.clone(),
            arguments: c.arguments.clone(),
        }
    }
}

/// What the parser makes of the model's text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Call(ToolCall),
}

/// Reads tool calls out of the model's text as it streams. Text that may
/// be the start of a call is held back until it is known not to be.
#[derive(Debug)]
pub struct CallParser {
    /// Prefix of the calls' ids.
    id_prefix: String,
    buffer: String,
    /// Inside `<tool_call>`: the buffer is the call's body so far.
    in_call: bool,
    calls: usize,
    /// Nothing but white space has been given out yet.
    at_start: bool,
}

impl CallParser {
    pub fn new(id_prefix: &str) -> Self {
        Self {
            id_prefix: id_prefix.to_owned(),
            buffer: String::new(),
            in_call: false,
            calls: 0,
            at_start: true,
        }
    }

    /// Calls read so far.
    pub fn calls(&self) -> usize {
        self.calls
    }

    /// A call's JSON body; `bare` (a Llama 3 object with no tags around
    /// it) must name its arguments, so that an answer such as
    /// `{"name": "Bob"}` stays text.
    fn call(&mut self, body: &str, bare: bool) -> Option<ToolCall> {
        let v: Value = serde_json::from_str(body.trim()).ok()?;
        let name = v.get("name")?.as_str()?.to_owned();
        let arguments = match v.get("arguments").or_else(|| v.get("parameters")) {
            None if bare => return None,
            None | Some(Value::Null) => "{}".to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(other) => other.to_string(),
        };
        let id = format!("call_{}_{}", self.id_prefix, self.calls);
        self.calls += 1;
        Some(ToolCall {
            id,
            name,
            arguments,
        })
    }

    fn text(&mut self, text: String, out: &mut Vec<Piece>) {
        if text.is_empty() {
            return;
        }
        if !text.trim().is_empty() {
            self.at_start = false;
        }
        out.push(Piece::Text(text));
    }

    /// The pieces `delta` completes.
    pub fn feed(&mut self, delta: &str) -> Vec<Piece> {
        self.buffer.push_str(delta);
        let mut out = Vec::new();
        loop {
            if self.in_call {
                let Some(end) = self.buffer.find(CALL_CLOSE) else {
                    break;
                };
                let body: String = self.buffer[..end].to_owned();
                self.buffer.drain(..end + CALL_CLOSE.len());
                self.in_call = false;
                match self.call(&body, false) {
                    Some(c) => out.push(Piece::Call(c)),
                    None => self.text(format!("{CALL_OPEN}{body}{CALL_CLOSE}"), &mut out),
                }
                continue;
            }
            if let Some(start) = self.buffer.find(CALL_OPEN) {
                let before: String = self.buffer[..start].to_owned();
                self.buffer.drain(..start + CALL_OPEN.len());
                self.text(before, &mut out);
                self.in_call = true;
                continue;
            }
            // A Llama 3 call is a JSON object that is the whole answer:
            // held back while the answer may still be one.
            if self.at_start && self.buffer.trim_start().starts_with('{') {
                break;
            }
            let keep = held_back(&self.buffer);
            let give = self.buffer.len() - keep;
            let text: String = self.buffer.drain(..give).collect();
            self.text(text, &mut out);
            break;
        }
        out
    }

    /// The pieces left at the end of the answer: an unclosed call whose body
    /// is a whole call counts (some models stop before the closing tag);
    /// anything else is text.
    pub fn finish(&mut self) -> Vec<Piece> {
        let rest = std::mem::take(&mut self.buffer);
        let mut out = Vec::new();
        if self.in_call {
            self.in_call = false;
            match self.call(&rest, false) {
                Some(c) => out.push(Piece::Call(c)),
                None => self.text(format!("{CALL_OPEN}{rest}"), &mut out),
            }
        } else if self.at_start && rest.trim_start().starts_with('{') {
            match self.call(&rest, true) {
                Some(c) => out.push(Piece::Call(c)),
                None => self.text(rest, &mut out),
            }
        } else {
            self.text(rest, &mut out);
        }
        out
    }
}

/// Bytes at the end of `text` that may begin `<tool_call>`.
fn held_back(text: &str) -> usize {
    (1..CALL_OPEN.len())
        .rev()
        .find(|&n| {
            text.len() >= n
                && text.is_char_boundary(text.len() - n)
                && text.ends_with(&CALL_OPEN[..n])
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(parser: &mut CallParser, parts: &[&str]) -> Vec<Piece> {
        let mut out: Vec<Piece> = parts.iter().flat_map(|p| parser.feed(p)).collect();
        out.extend(parser.finish());
        // Adjacent text pieces joined, for comparison.
        let mut joined: Vec<Piece> = Vec::new();
        for p in out {
            match (joined.last_mut(), p) {
                (Some(Piece::Text(a)), Piece::Text(b)) => a.push_str(&b),
                (_, p) => joined.push(p),
            }
        }
        joined
    }

    #[test]
    fn a_call_is_read_however_the_stream_splits_it() {
        let answer = "Let me check.\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        let want = vec![
            Piece::Text("Let me check.\n".into()),
            Piece::Call(ToolCall {
                id: "call_r1_0".into(),
                name: "get_weather".into(),
                arguments: "{\"city\":\"Paris\"}".into(),
            }),
        ];
        let chars: Vec<char> = answer.chars().collect();
        for cut in 0..=chars.len() {
            let (a, b): (String, String) =
                (chars[..cut].iter().collect(), chars[cut..].iter().collect());
            let mut parser = CallParser::new("r1");
            assert_eq!(feed_all(&mut parser, &[&a, &b]), want, "split at {cut}");
        }
        // One character at a time.
        let singles: Vec<String> = chars.iter().map(char::to_string).collect();
        let parts: Vec<&str> = singles.iter().map(String::as_str).collect();
        assert_eq!(feed_all(&mut CallParser::new("r1"), &parts), want);
    }

    #[test]
    fn text_that_only_looks_like_a_call_stays_text() {
        let mut parser = CallParser::new("r");
        // Not JSON inside the tags: given back as it was written.
        let out = feed_all(
            &mut parser,
            &["a <tool_call>not json</tool_call> b <tool", "s>"],
        );
        assert_eq!(
            out,
            vec![Piece::Text(
                "a <tool_call>not json</tool_call> b <tools>".into()
            )]
        );
        assert_eq!(parser.calls(), 0);
        // A "<" that is no call is given out as soon as that is known.
        let mut parser = CallParser::new("r");
        assert_eq!(parser.feed("1 <"), vec![Piece::Text("1 ".into())]);
        assert_eq!(parser.feed(" 2"), vec![Piece::Text("< 2".into())]);
    }

    #[test]
    fn two_calls_an_unclosed_one_and_a_llama3_object_are_read() {
        let mut parser = CallParser::new("x");
        let out = feed_all(
            &mut parser,
            &[
                "<tool_call>{\"name\": \"a\", \"arguments\": {}}</tool_call>\n<tool_call>{\"name\": \"b\", \"arguments\": \"{\\\"k\\\": 1}\"}",
            ],
        );
        let names: Vec<_> = out
            .iter()
            .filter_map(|p| match p {
                Piece::Call(c) => Some((c.id.as_str(), c.name.as_str(), c.arguments.as_str())),
                Piece::Text(_) => None,
            })
            .collect();
        assert_eq!(
            names,
            vec![("call_x_0", "a", "{}"), ("call_x_1", "b", "{\"k\": 1}")]
        );
        let out = feed_all(
            &mut CallParser::new("y"),
            &[
                "{\"name\": \"lookup\", ",
                "\"parameters\": {\"q\": \"rust\"}}",
            ],
        );
        assert_eq!(
            out,
            vec![Piece::Call(ToolCall {
                id: "call_y_0".into(),
                name: "lookup".into(),
                arguments: "{\"q\":\"rust\"}".into()
            })]
        );
        // A JSON answer that is no call is text.
        for answer in ["{\"answer\": 42}", "{\"name\": \"Bob\"}"] {
            let out = feed_all(&mut CallParser::new("z"), &[answer]);
            assert_eq!(out, vec![Piece::Text(answer.into())]);
        }
    }

    #[test]
    fn bad_tools_and_choices_are_refused_naming_the_field() {
        let tool = |name: &str| json!({"type": "function", "function": {"name": name, "parameters": {"type": "object"}}});
        let ok = [tool("get_weather"), tool("search")];
        let offered = parse(Some(&ok), Some(&json!("required"))).unwrap();
        assert_eq!(offered.tools.len(), 2);
        assert_eq!(offered.choice, ToolChoice::Required);
        assert!(offered.server.is_empty());
        let named = json!({"type": "function", "function": {"name": "search"}});
        assert_eq!(
            parse(Some(&ok), Some(&named)).unwrap().choice,
            ToolChoice::Function("search".into())
        );
        // A server-side tool, asked for by its type, may be the forced call.
        let server = [tool("search"), json!({"type": "code_run"})];
        let forced = json!({"type": "function", "function": {"name": "code_run"}});
        let offered = parse(Some(&server), Some(&forced)).unwrap();
        assert_eq!(offered.server, vec!["code_run".to_owned()]);
        assert_eq!(offered.tools.len(), 1);
        assert_eq!(offered.choice, ToolChoice::Function("code_run".into()));
        let cases: Vec<(Vec<Value>, Option<Value>, &str, &str)> = vec![
            (
                vec![json!({"type": "retrieval"})],
                None,
                "tools",
                "\"function\" or a server-side tool (code_run, file_parse, sql_query)",
            ),
            (vec![tool("code_run")], None, "tools", "server-side tool's"),
            (vec![tool("has space")], None, "tools", "letters, digits"),
            (vec![tool("a"), tool("a")], None, "tools", "given twice"),
            (
                vec![json!({"type": "function", "function": {"name": "a", "parameters": "x"}})],
                None,
                "tools",
                "JSON Schema object",
            ),
            (
                ok.to_vec(),
                Some(json!("sometimes")),
                "tool_choice",
                "got \"sometimes\"",
            ),
            (
                ok.to_vec(),
                Some(json!({"type": "function", "function": {"name": "nope"}})),
                "tool_choice",
                "not among",
            ),
            (
                vec![],
                Some(json!("required")),
                "tool_choice",
                "gives no tools",
            ),
        ];
        for (tools, choice, param, says) in cases {
            let (message, field) = parse(Some(&tools), choice.as_ref()).unwrap_err();
            assert_eq!(field, param, "{message}");
            assert!(message.contains(says), "{message:?} should say {says:?}");
        }
        // The wire form goes both ways.
        for c in [
            ToolChoice::Auto,
            ToolChoice::None,
            ToolChoice::Required,
            ToolChoice::Function("f".into()),
        ] {
            let (a, b) = c.to_wire();
            assert_eq!(ToolChoice::from_wire(&a, &b).unwrap(), c);
        }
    }
}
