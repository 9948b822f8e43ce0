// status.cpp: libnatter from C++17. A thin RAII layer owns the client (std::unique_ptr with
// natter_client_free as its deleter), the event callback copies each event into a queue this
// thread waits on, and failed calls become exceptions. The program logs in, joins the
// network, searches the index for the users named on the command line, and prints what it
// found and the state of its node.
//
//   c++ -std=c++17 -Wall -Wextra -Werror status.cpp $(pkg-config --cflags --libs natter) -pthread
//   natter-status --network network.toml --data carol-data --user carol [--register]
//                 [--listen 127.0.0.1:0] alice bob
//
// The password comes from NATTER_PASSWORD. A user that is not found is searched again for a
// few seconds (a user who just came online takes a moment to be published).

#include <natter.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace natter {

// A failed libnatter call.
class Error : public std::runtime_error {
  public:
    Error(const std::string &what, NatterResult r)
        : std::runtime_error(what + ": " + natter_result_message(r)), code(r) {}
    NatterResult code;
};

inline void check(NatterResult r, const char *what) {
    if (r != NATTER_OK) throw Error(what, r);
}

// An event, copied out of the callback (the library's event lives only during the callback).
struct Event {
    NatterEventKind kind;
    uint64_t call, search;
    std::string user, detail;
    uint32_t code, count;
};

class Client;

}  // namespace natter

// The C callback: a plain function with C linkage, which must not throw.
extern "C" void natter_status_on_event(void *self, const NatterEvent *event);

namespace natter {

class Client {
  public:
    explicit Client(const NatterOptions &options) {
        NatterClient *c = nullptr;
        check(natter_client_new(&options, &c), "creating the client");
        client_.reset(c);
        check(natter_client_set_event_callback(client_.get(), natter_status_on_event, this),
              "setting the event callback");
    }

    Client(const Client &) = delete;
    Client &operator=(const Client &) = delete;

    NatterClient *get() const { return client_.get(); }

    // The next event, waiting up to `timeout`.
    std::optional<Event> next(std::chrono::milliseconds timeout) {
        std::unique_lock<std::mutex> lock(mutex_);
        if (!ready_.wait_for(lock, timeout, [this] { return !queue_.empty(); })) return {};
        Event e = std::move(queue_.front());
        queue_.pop_front();
        return e;
    }

    // Runs on the library's callback thread.
    void deliver(const NatterEvent &e) {
        Event copy{e.kind,
                   e.call,
                   e.search,
                   e.user ? e.user : "",
                   e.detail ? e.detail : "",
                   e.code,
                   e.count};
        {
            std::lock_guard<std::mutex> lock(mutex_);
            queue_.push_back(std::move(copy));
        }
        ready_.notify_one();
    }

  private:
    struct Free {
        void operator()(NatterClient *c) const { natter_client_free(c); }
    };
    std::mutex mutex_;
    std::condition_variable ready_;
    std::deque<Event> queue_;
    // Declared last, so destroyed first: natter_client_free returns only once no callback
    // runs any more, before the queue the callback feeds goes away.
    std::unique_ptr<NatterClient, Free> client_;
};

}  // namespace natter

extern "C" void natter_status_on_event(void *self, const NatterEvent *event) {
    try {
        static_cast<natter::Client *>(self)->deliver(*event);
    } catch (...) {
        // Out of memory while copying: drop the event rather than unwind into C.
    }
}

namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

struct Args {
    std::string network, data, user, listen;
    bool do_register = false;
    std::vector<std::string> search;
};

std::optional<Args> parse(int argc, char **argv) {
    Args a;
    for (int i = 1; i < argc; i++) {
        std::string k = argv[i];
        if (k == "--register") {
            a.do_register = true;
        } else if (k.rfind("--", 0) == 0 && i + 1 < argc) {
            std::string v = argv[++i];
            if (k == "--network") a.network = v;
            else if (k == "--data") a.data = v;
            else if (k == "--user") a.user = v;
            else if (k == "--listen") a.listen = v;
            else return {};
        } else if (k.rfind("--", 0) == 0) {
            return {};
        } else {
            a.search.push_back(k);
        }
    }
    if (a.network.empty() || a.data.empty() || a.user.empty()) return {};
    return a;
}

const char *nat_name(NatterNatType t) {
    switch (t) {
    case NATTER_NAT_OPEN: return "open";
    case NATTER_NAT_PUBLIC_FILTERED: return "public, filtered";
    case NATTER_NAT_FULL_CONE: return "full cone";
    case NATTER_NAT_RESTRICTED_CONE: return "restricted cone";
    case NATTER_NAT_PORT_RESTRICTED_CONE: return "port-restricted cone";
    case NATTER_NAT_SYMMETRIC: return "symmetric";
    case NATTER_NAT_UDP_BLOCKED: return "UDP blocked";
    default: return "unknown";
    }
}

// Search `user` until found, or until `patience` has passed; returns the result code.
uint32_t search(natter::Client &c, const std::string &user, std::chrono::seconds patience) {
    const auto give_up = Clock::now() + patience;
    for (;;) {
        uint64_t id = 0;
        natter::check(natter_client_search(c.get(), user.c_str(), &id), "searching");
        for (;;) {
            auto e = c.next(5s);
            if (!e) throw std::runtime_error("no answer to the search of " + user);
            if (e->kind != NATTER_EVENT_SEARCH_RESULT || e->search != id) continue;
            if (e->code == NATTER_SEARCH_FOUND) {
                std::printf("search %s: found, %u device(s) online\n", user.c_str(),
                            static_cast<unsigned>(e->count));
                return e->code;
            }
            if (Clock::now() >= give_up) {
                std::printf("search %s: %s\n", user.c_str(),
                            e->code == NATTER_SEARCH_NOT_FOUND ? "not found" : "unavailable");
                return e->code;
            }
            break;
        }
        std::this_thread::sleep_for(300ms);
    }
}

}  // namespace

int main(int argc, char **argv) {
    auto args = parse(argc, argv);
    if (!args) {
        std::fprintf(stderr,
                     "usage: %s --network FILE --data DIR --user NAME [--register] "
                     "[--listen IP:PORT] [USER...]\n",
                     argv[0]);
        return 2;
    }
    std::setvbuf(stdout, nullptr, _IOLBF, 0);
    const char *password = std::getenv("NATTER_PASSWORD");
    try {
        NatterOptions o;
        natter::check(natter_options_default(&o, NATTER_OPTIONS_VERSION), "options");
        o.network_file = args->network.c_str();
        o.data_dir = args->data.c_str();
        o.listen = args->listen.empty() ? nullptr : args->listen.c_str();
        o.audio = NATTER_AUDIO_APP;  // no calls here: keep away from the sound card
        natter::Client client(o);
        if (args->do_register) {
            NatterResult r =
                natter_client_register(client.get(), args->user.c_str(), password ? password : "");
            if (r != NATTER_NAME_TAKEN) natter::check(r, "registering");
        }
        natter::check(natter_client_login(client.get(), args->user.c_str(), password),
                      "logging in");
        natter::check(natter_client_start(client.get()), "starting");
        for (bool attached = false; !attached;) {
            auto e = client.next(30s);
            if (!e) throw std::runtime_error("no super node within 30 s");
            attached = e->kind == NATTER_EVENT_ATTACHED;
            if (attached) std::printf("attached to super node %s\n", e->detail.c_str());
        }
        // Yourself: wait until published; others: a definite answer.
        for (const auto &user : args->search)
            search(client, user, user == args->user ? 10s : 0s);

        NatterNodeState s;
        s.version = NATTER_NODE_STATE_VERSION;
        natter::check(natter_client_get_state(client.get(), &s), "state");
        std::printf("state: %s, %u super node(s), NAT %s, %s, UDP port %u\n",
                    s.started ? "started" : "stopped", static_cast<unsigned>(s.super_nodes),
                    nat_name(s.nat), s.role == NATTER_NODE_SUPER_NODE ? "super node" : "client",
                    static_cast<unsigned>(s.udp_port));
        // Ask the size, then fill; the live text may grow in between: ask again then.
        std::string text;
        for (;;) {
            size_t len = 0;
            NatterResult r = natter_client_describe(client.get(), nullptr, 0, &len);
            if (r != NATTER_BUFFER_TOO_SMALL) natter::check(r, "describing");
            text.assign(len + 1, '\0');
            r = natter_client_describe(client.get(), text.data(), text.size(), &len);
            if (r == NATTER_BUFFER_TOO_SMALL) continue;
            natter::check(r, "describing");
            text.resize(len);
            break;
        }
        std::printf("%s\n", text.c_str());
        natter::check(natter_client_stop(client.get()), "stopping");
    } catch (const std::exception &e) {
        std::fprintf(stderr, "natter-status: %s\n", e.what());
        return 1;
    }
    std::printf("done\n");
    return 0;
}
