//! A minimal GGUF writer, enough to make a LoRA adapter for the demo model in
//! a test (f32 tensors, string and f32 metadata).

use std::io::Write;
use std::path::Path;

const ALIGNMENT: usize = 32;

pub struct Tensor {
    pub name: String,
    /// ggml order: ne[0] is the fastest-moving dimension.
    pub ne: Vec<u64>,
    pub data: Vec<f32>,
}

pub enum Meta {
    Str(&'static str, String),
    F32(&'static str, f32),
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub fn write(path: &Path, meta: &[Meta], tensors: &[Tensor]) {
    let mut out = Vec::new();
    out.extend_from_slice(b"GGUF");
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(meta.len() as u64).to_le_bytes());
    for m in meta {
        match m {
            Meta::Str(k, v) => {
                write_str(&mut out, k);
                out.extend_from_slice(&8u32.to_le_bytes());
                write_str(&mut out, v);
            }
            Meta::F32(k, v) => {
                write_str(&mut out, k);
                out.extend_from_slice(&6u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    let mut offset = 0usize;
    let mut offsets = Vec::new();
    for t in tensors {
        write_str(&mut out, &t.name);
        out.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
        for d in &t.ne {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&0u32.to_le_bytes()); // GGML_TYPE_F32
        out.extend_from_slice(&(offset as u64).to_le_bytes());
        offsets.push(offset);
        offset += (t.data.len() * 4).div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    while out.len() % ALIGNMENT != 0 {
        out.push(0);
    }
    let base = out.len();
    for (t, off) in tensors.iter().zip(offsets) {
        out.resize(base + off, 0);
        for v in &t.data {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&out).unwrap();
}

/// A rank-`rank` LoRA on every layer's `ffn_down` of the demo model
/// (SmolLM2-135M: 30 layers, n_embd 576, n_ff 1536), with deterministic
/// pseudo-random weights large enough to change greedy output.
pub fn demo_lora(path: &Path, rank: u64) {
    let (layers, n_embd, n_ff) = (30, 576u64, 1536u64);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0
    };
    let mut tensors = Vec::new();
    for l in 0..layers {
        let a: Vec<f32> = (0..n_ff * rank).map(|_| next()).collect();
        let b: Vec<f32> = (0..rank * n_embd).map(|_| next()).collect();
        tensors.push(Tensor {
            name: format!("blk.{l}.ffn_down.weight.lora_a"),
            ne: vec![n_ff, rank],
            data: a,
        });
        tensors.push(Tensor {
            name: format!("blk.{l}.ffn_down.weight.lora_b"),
            ne: vec![rank, n_embd],
            data: b,
        });
    }
    let meta = [
        Meta::Str("general.architecture", "llama".into()),
        Meta::Str("general.type", "adapter".into()),
        Meta::Str("adapter.type", "lora".into()),
        Meta::F32("adapter.lora.alpha", rank as f32),
    ];
    write(path, &meta, &tensors);
}
