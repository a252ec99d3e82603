// tokenizer.h — Llama 3 byte-level BPE read from GGUF metadata (tokens, merges, token types,
// the "llama-bpe" pre-tokenizer split, special tokens). Ids identical to llama.cpp's.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gguf.h"

namespace lkv {

class Tokenizer {
 public:
  // Throws Error when the vocabulary is missing or malformed (e.g. model is not BPE/gpt2).
  static std::unique_ptr<Tokenizer> from_gguf(const GgufFile& f);
  // Builds a Llama 3 ("llama-bpe") tokenizer from a vocabulary already in memory. tokens are
  // byte-level (GPT-2) strings as stored in GGUF; types are llama.cpp token types (1 normal,
  // 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte; empty = all normal); merges are
  // "a b" strings in rank order; bos/eos/eot may be -1 (eot -1: found by name, "<|eot_id|>").
  // Throws Error on malformed input (duplicate tokens, ids out of range, size mismatch).
  static std::unique_ptr<Tokenizer> from_vocab(std::vector<std::string> tokens, std::vector<int32_t> types,
                                               std::vector<std::string> merges, int32_t bos, int32_t eos,
                                               int32_t eot, bool add_bos);
  // The Llama 3 pre-tokenizer split alone (no special tokens, no byte-level mapping): the UTF-8
  // pieces, with invalid bytes replaced by U+FFFD as llama.cpp does. For tests.
  static std::vector<std::string> split_llama3(const std::string& text);
  virtual ~Tokenizer() = default;

  // parse_special: text such as "<|eot_id|>" becomes the special token (as llama.cpp's
  // tokenize with parse_special=true); otherwise it is tokenized as plain text.
  virtual std::vector<int32_t> encode(const std::string& text, bool add_bos, bool parse_special) const = 0;
  // Raw bytes of one token (byte-level mapping undone). Control tokens return their text when
  // `special` is true, nothing otherwise.
  virtual std::string token_bytes(int32_t id, bool special) const = 0;
  virtual std::string token_text(int32_t id) const = 0;  // the vocabulary string as stored

  virtual int32_t n_vocab() const = 0;
  virtual int32_t bos() const = 0;          // -1 when none
  virtual int32_t eos() const = 0;
  virtual int32_t eot() const = 0;          // <|eot_id|> or -1
  virtual bool add_bos_default() const = 0; // tokenizer.ggml.add_bos_token (default true)
  virtual bool is_eog(int32_t id) const = 0;  // end of generation: eos, eot, end_of_text...
  virtual bool is_control(int32_t id) const = 0;
};

}  // namespace lkv
