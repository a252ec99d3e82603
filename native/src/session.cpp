// session.cpp — prefill, generation, rewind and state files of one session.
#include "session.h"

#include <chrono>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <thread>

namespace lkv {

Engine::Engine(int threads) : kernels(&kernels_best()) {
  if (threads <= 0) threads = (int)std::max(1u, std::thread::hardware_concurrency());
  pool = std::make_unique<ThreadPool>(threads);
}

Session::Session(std::shared_ptr<const Model> model, std::shared_ptr<Engine> engine, int n_ctx, const std::string& kv_spec)
    : model_(std::move(model)), engine_(std::move(engine)), n_ctx_(n_ctx) {
  state_ = make_session_state(*model_, n_ctx, kv_spec);
}

void Session::eval(const std::vector<int32_t>& tokens, bool want_logits, const std::function<void(int, int)>& progress) {
  LKV_CHECK(!tokens.empty(), "eval: no tokens");
  std::lock_guard<std::mutex> lock(engine_->compute);
  ForwardContext ctx;
  ctx.kernels = engine_->kernels;
  ctx.pool = engine_->pool.get();
  ctx.cancel = &cancel_;
  forward(*model_, *state_, tokens.data(), (int)tokens.size(), ctx, want_logits, progress);
}

GenerateResult Session::generate(const SamplingParams& sp, int max_tokens, const std::function<void(int32_t)>& on_token) {
  LKV_CHECK(state_->has_logits, "generate: evaluate a prompt first (no logits yet)");
  LKV_CHECK(max_tokens >= 0, "generate: max_tokens must be >= 0");
  Sampler sampler(sp);
  GenerateResult r;
  r.reason = "length";
  const Tokenizer& tok = *model_->tokenizer;
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < max_tokens; i++) {
    if (cancel_.load()) { r.reason = "cancelled"; break; }
    const int32_t next = sampler.sample(state_->logits.data(), model_->cfg.n_vocab, state_->tokens);
    r.tokens++;
    on_token(next);
    if (tok.is_eog(next)) { r.reason = "eos"; break; }
    if (n_tokens() >= n_ctx_) { r.reason = "length"; break; }
    try {
      eval({next}, true, {});
    } catch (const Error& e) {
      if (std::string(e.what()) == "cancelled") { r.reason = "cancelled"; break; }
      throw;
    }
  }
  r.decode_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

void Session::truncate(int n) {
  LKV_CHECK(n >= 0 && n <= n_tokens(), "truncate: %d is outside [0, %d]", n, n_tokens());
  std::lock_guard<std::mutex> lock(engine_->compute);
  state_->kv->truncate(n);
  state_->tokens.resize((size_t)n);
  state_->has_logits = false;
}

// ---- state files ----------------------------------------------------------------------------

namespace {
constexpr char kMagic[4] = {'L', 'K', 'V', 'S'};
constexpr uint32_t kVersion = 1;

uint64_t fnv1a(const char* p, size_t n, uint64_t h = 1469598103934665603ULL) {
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)p[i]) * 1099511628211ULL;
  return h;
}

void put_str(std::ostream& o, const std::string& s) {
  const uint64_t n = s.size();
  o.write((const char*)&n, 8);
  o.write(s.data(), (std::streamsize)n);
}

std::string get_str(std::istream& in, size_t limit) {
  uint64_t n = 0;
  in.read((char*)&n, 8);
  LKV_CHECK(in && n <= limit, "state file: bad string length");
  std::string s((size_t)n, '\0');
  in.read(&s[0], (std::streamsize)n);
  LKV_CHECK((bool)in, "state file: truncated");
  return s;
}
}  // namespace

std::string Session::model_identity() const {
  const LlamaConfig& c = model_->cfg;
  // Shape, vocabulary size, a fingerprint of the file header (metadata and tensor table) and of
  // 64 samples of 4 KiB spread over the tensor data: files that differ only in weights differ.
  const GgufFile& f = *model_->file;
  const uint64_t head_end = std::min<uint64_t>(f.data_offset, f.size());
  uint64_t h = fnv1a((const char*)f.base(), (size_t)head_end);
  const uint64_t data_len = f.size() - head_end;
  const uint64_t sample = 4096;
  for (int i = 0; i < 64 && data_len > 0; i++) {
    const uint64_t off = head_end + (data_len > sample ? (data_len - sample) * i / 63 : 0);
    h = fnv1a((const char*)f.base() + off, (size_t)std::min(sample, f.size() - off), h);
  }
  return strprintf("llama L%d E%d H%d/%d D%d F%d V%d size=%zu fp=%016llx", c.n_layer, c.n_embd, c.n_head, c.n_head_kv,
                   c.head_dim, c.n_ff, c.n_vocab, f.size(), (unsigned long long)h);
}

void Session::save(const std::string& path, const std::string& meta) const {
  std::ostringstream body;
  body.write(kMagic, 4);
  body.write((const char*)&kVersion, 4);
  put_str(body, model_identity());
  put_str(body, state_->kv->spec());
  put_str(body, meta);
  const uint64_t nt = state_->tokens.size();
  body.write((const char*)&nt, 8);
  body.write((const char*)state_->tokens.data(), (std::streamsize)(nt * sizeof(int32_t)));
  state_->kv->save(body);
  const std::string bytes = body.str();
  const uint64_t sum = fnv1a(bytes.data(), bytes.size());
  const std::string tmp = path + ".tmp" + std::to_string((uintptr_t)this);
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    LKV_CHECK((bool)out, "cannot write state file %s", tmp.c_str());
    out.write(bytes.data(), (std::streamsize)bytes.size());
    out.write((const char*)&sum, 8);
    out.flush();
    LKV_CHECK((bool)out, "failed writing state file %s (disk full?)", tmp.c_str());
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error(strprintf("cannot move state file into place at %s", path.c_str()));
  }
}

std::string Session::load(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  LKV_CHECK((bool)in, "cannot open state file %s", path.c_str());
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  LKV_CHECK(bytes.size() >= 16 && std::memcmp(bytes.data(), kMagic, 4) == 0, "%s is not a llamakv state file", path.c_str());
  uint64_t sum = 0;
  std::memcpy(&sum, bytes.data() + bytes.size() - 8, 8);
  LKV_CHECK(fnv1a(bytes.data(), bytes.size() - 8) == sum, "state file %s is corrupt (checksum mismatch)", path.c_str());
  std::istringstream body(bytes.substr(4, bytes.size() - 12));
  uint32_t version = 0;
  body.read((char*)&version, 4);
  LKV_CHECK(version == kVersion, "state file %s has version %u, this build reads %u", path.c_str(), version, kVersion);
  const std::string ident = get_str(body, 4096);
  LKV_CHECK(ident == model_identity(), "state file %s was made with a different model (%s)", path.c_str(), ident.c_str());
  const std::string spec = get_str(body, 4096);
  LKV_CHECK(spec == state_->kv->spec(), "state file %s uses KV spec '%s', this session uses '%s'", path.c_str(), spec.c_str(),
            state_->kv->spec().c_str());
  std::string meta = get_str(body, bytes.size());
  uint64_t nt = 0;
  body.read((char*)&nt, 8);
  LKV_CHECK(body && nt <= (uint64_t)n_ctx_, "state file %s holds %llu tokens, more than this session's context %d", path.c_str(),
            (unsigned long long)nt, n_ctx_);
  std::vector<int32_t> toks((size_t)nt);
  body.read((char*)toks.data(), (std::streamsize)(nt * sizeof(int32_t)));
  LKV_CHECK((bool)body, "state file %s is truncated", path.c_str());
  auto fresh = make_session_state(*model_, n_ctx_, spec);
  fresh->kv->load(body);
  LKV_CHECK(fresh->kv->n_tokens() == (int)nt, "state file %s: cache holds %d tokens, token list %llu", path.c_str(),
            fresh->kv->n_tokens(), (unsigned long long)nt);
  fresh->tokens = std::move(toks);
  std::lock_guard<std::mutex> lock(engine_->compute);
  state_ = std::move(fresh);
  return meta;
}

}  // namespace lkv
