/* The buddy list from C: a user edits it on a laptop (add, nickname, group, block, with the
 * reasons an edit is refused), a new install logs in with the password and gets the whole
 * list back from the network, and the list objects behave (count, get, bounds, free); a
 * contact request is accepted, the two contacts see each other's presence, and one writes
 * to the other (the event, the receipt, the history and its search).
 *
 *   contacts NETWORK_FILE DATA_DIR      (a login server must be running)
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "natter.h"
#include "check.h"

static NatterClient *client(const char *network, const char *root, const char *name) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    NatterOptions o;
    EXPECT(natter_options_default(&o, NATTER_OPTIONS_VERSION), NATTER_OK);
    o.network_file = network;
    o.data_dir = dir;
    o.listen = "127.0.0.1:0";
    o.audio = NATTER_AUDIO_APP;
    NatterClient *c = NULL;
    EXPECT(natter_client_new(&o, &c), NATTER_OK);
    return c;
}

/* Wait for the sync after a login; returns its code (1: other devices' edits came in). */
static int synced(NatterClient *c) {
    NatterEvent *e = next_of(c, NATTER_EVENT_CONTACTS_SYNCED);
    if (!e) return -1;
    printf("%s\n", e->detail);
    int code = (int)e->code;
    natter_event_free(e);
    return code;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: contacts NETWORK_FILE DATA_DIR\n");
        return 2;
    }
    const char *password = "dave's long password";
    NatterClient *laptop = client(argv[1], argv[2], "laptop");
    NatterClient *phone = client(argv[1], argv[2], "phone");
    if (!laptop || !phone) return 1;

    bool changed = false;
    EXPECT(natter_client_add_contact(laptop, "bob", NULL, &changed), NATTER_NOT_LOGGED_IN);
    EXPECT(natter_client_register(laptop, "dave", password), NATTER_OK);
    EXPECT(natter_client_login(laptop, "dave", password), NATTER_OK);
    CHECK(synced(laptop) == 0);

    EXPECT(natter_client_add_contact(laptop, "bob", "hi bob", &changed), NATTER_OK);
    CHECK(changed);
    EXPECT(natter_client_add_contact(laptop, "Bob", NULL, &changed), NATTER_OK);
    CHECK(!changed);
    EXPECT(natter_client_set_nickname(laptop, "bob", "Bobby", NULL), NATTER_OK);
    EXPECT(natter_client_set_group(laptop, "bob", "work", true, NULL), NATTER_OK);
    EXPECT(natter_client_block(laptop, "mallory", true, &changed), NATTER_OK);
    CHECK(changed);
    EXPECT(natter_client_add_contact(laptop, "no spaces", NULL, NULL), NATTER_INVALID_USER_NAME);
    char long_name[200];
    memset(long_name, 'x', sizeof long_name - 1);
    long_name[sizeof long_name - 1] = 0;
    EXPECT(natter_client_set_nickname(laptop, "bob", long_name, NULL), NATTER_INVALID_ARGUMENT);
    EXPECT(natter_client_set_group(laptop, "bob", "", true, NULL), NATTER_INVALID_ARGUMENT);
    EXPECT(natter_client_add_contact(laptop, NULL, NULL, NULL), NATTER_NULL_ARGUMENT);
    uint64_t version = 0;
    EXPECT(natter_client_sync_contacts(laptop, NULL, &version), NATTER_OK);
    CHECK(version >= 2);
    printf("laptop: backup version %llu\n", (unsigned long long)version);

    /* A new install: the password alone brings the list back. */
    EXPECT(natter_client_login(phone, "dave", password), NATTER_OK);
    CHECK(synced(phone) == 1);
    NatterContactList *list = NULL;
    EXPECT(natter_client_contacts(phone, &list), NATTER_OK);
    size_t n = 0;
    EXPECT(natter_contact_list_count(list, &n), NATTER_OK);
    CHECK(n == 2);
    NatterContact bob, mallory, none;
    EXPECT(natter_contact_list_get(list, 0, &bob), NATTER_OK);
    EXPECT(natter_contact_list_get(list, 1, &mallory), NATTER_OK);
    EXPECT(natter_contact_list_get(list, 2, &none), NATTER_INVALID_ARGUMENT);
    CHECK(strcmp(bob.user, "bob") == 0 && bob.contact && !bob.blocked);
    CHECK(strcmp(bob.nickname, "Bobby") == 0 && strcmp(bob.display_name, "") == 0);
    CHECK(bob.group_count == 1 && strcmp(bob.groups[0], "work") == 0);
    CHECK(strcmp(mallory.user, "mallory") == 0 && !mallory.contact && mallory.blocked);
    CHECK(mallory.group_count == 0);
    printf("phone: %s (%s, in %s), %s (blocked)\n", bob.user, bob.nickname, bob.groups[0],
           mallory.user);
    EXPECT(natter_contact_list_free(list), NATTER_OK);
    EXPECT(natter_contact_list_free(list), NATTER_INVALID_HANDLE);
    EXPECT(natter_contact_list_count(list, &n), NATTER_INVALID_HANDLE);

    /* Removing on the phone reaches the laptop at its next sync. */
    EXPECT(natter_client_remove_contact(phone, "bob", &changed), NATTER_OK);
    CHECK(changed);
    EXPECT(natter_client_sync_contacts(phone, NULL, NULL), NATTER_OK);
    EXPECT(natter_client_sync_contacts(laptop, NULL, NULL), NATTER_OK);
    EXPECT(natter_client_contacts(laptop, &list), NATTER_OK);
    EXPECT(natter_contact_list_count(list, &n), NATTER_OK);
    CHECK(n == 1);
    EXPECT(natter_contact_list_get(list, 0, &mallory), NATTER_OK);
    CHECK(strcmp(mallory.user, "mallory") == 0);
    EXPECT(natter_contact_list_free(list), NATTER_OK);

    /* A contact request: dave asks erin, who is not looking; her first login finds it, she
       accepts, and dave hears of it. */
    NatterClient *erin = client(argv[1], argv[2], "erin");
    if (!erin) return 1;
    EXPECT(natter_client_register(erin, "erin", "erin's long password"), NATTER_OK);
    EXPECT(natter_client_add_contact(laptop, "erin", "dave from the lab", NULL), NATTER_OK);
    EXPECT(natter_client_sync_contacts(laptop, NULL, NULL), NATTER_OK);
    EXPECT(natter_client_login(erin, "erin", "erin's long password"), NATTER_OK);
    NatterEvent *asked = next_of(erin, NATTER_EVENT_CONTACT_REQUEST);
    CHECK(asked != NULL);
    if (asked) {
        CHECK(strcmp(asked->user, "dave") == 0 && strcmp(asked->detail, "dave from the lab") == 0);
        natter_event_free(asked);
    }
    EXPECT(natter_client_contacts(erin, &list), NATTER_OK);
    EXPECT(natter_contact_list_count(list, &n), NATTER_OK);
    CHECK(n == 1);
    NatterContact dave;
    EXPECT(natter_contact_list_get(list, 0, &dave), NATTER_OK);
    CHECK(strcmp(dave.user, "dave") == 0 && !dave.contact && dave.request != NULL &&
          strcmp(dave.request, "dave from the lab") == 0);
    EXPECT(natter_contact_list_free(list), NATTER_OK);
    EXPECT(natter_client_add_contact(erin, "dave", NULL, &changed), NATTER_OK);
    CHECK(changed);
    EXPECT(natter_client_decline_contact(erin, "dave", &changed), NATTER_OK);
    CHECK(!changed); /* answered already */
    EXPECT(natter_client_sync_contacts(erin, NULL, NULL), NATTER_OK);
    EXPECT(natter_client_sync_contacts(laptop, NULL, NULL), NATTER_OK);
    NatterEvent *accepted = next_of(laptop, NATTER_EVENT_CONTACT_ACCEPTED);
    CHECK(accepted != NULL);
    if (accepted) {
        CHECK(strcmp(accepted->user, "erin") == 0);
        natter_event_free(accepted);
    }
    printf("erin accepted dave's request\n");

    /* Contacts see each other's presence once their nodes run: pushed by the super node. */
    EXPECT(natter_client_start(laptop), NATTER_OK);
    EXPECT(natter_client_start(erin), NATTER_OK);
    NatterEvent *seen = next_of(laptop, NATTER_EVENT_CONTACT_PRESENCE);
    CHECK(seen != NULL);
    if (seen) {
        CHECK(strcmp(seen->user, "erin") == 0 && seen->code == NATTER_AVAILABILITY_ONLINE);
        printf("%s\n", seen->detail);
        natter_event_free(seen);
    }
    EXPECT(natter_client_contacts(laptop, &list), NATTER_OK);
    NatterContact erin_entry;
    EXPECT(natter_contact_list_get(list, 0, &erin_entry), NATTER_OK);
    CHECK(strcmp(erin_entry.user, "erin") == 0 &&
          erin_entry.availability == NATTER_AVAILABILITY_ONLINE);
    EXPECT(natter_contact_list_free(list), NATTER_OK);
    /* Chat: dave writes to erin, end to end; she gets it once, his receipt comes back, and
       both histories hold it. */
    NatterMessageId id;
    EXPECT(natter_client_send_message(laptop, "erin", "lunch at 1?", NULL, &id), NATTER_OK);
    CHECK(strlen(id.hex) == 32);
    EXPECT(natter_client_send_message(laptop, "erin", NULL, NULL, NULL), NATTER_NULL_ARGUMENT);
    EXPECT(natter_client_send_message(laptop, "erin", "x", "not an id", NULL),
           NATTER_INVALID_ARGUMENT);
    NatterEvent *got = next_of(erin, NATTER_EVENT_MESSAGE_RECEIVED);
    CHECK(got != NULL);
    if (got) {
        CHECK(strcmp(got->user, "dave") == 0 && strcmp(got->text, "lunch at 1?") == 0);
        CHECK(strcmp(got->message_id, id.hex) == 0 && !got->outgoing);
        CHECK(got->code == NATTER_MESSAGE_RECEIVED);
        printf("%s\n", got->detail);
        natter_event_free(got);
    }
    NatterEvent *status;
    while ((status = next_of(laptop, NATTER_EVENT_MESSAGE_STATUS)) &&
           status->code != NATTER_MESSAGE_DELIVERED) {
        natter_event_free(status);
    }
    CHECK(status != NULL);
    if (status) {
        CHECK(strcmp(status->message_id, id.hex) == 0 && strcmp(status->user, "erin") == 0);
        natter_event_free(status);
    }
    NatterMessageList *page = NULL;
    EXPECT(natter_client_history(erin, "dave", NULL, 10, &page), NATTER_OK);
    EXPECT(natter_message_list_count(page, &n), NATTER_OK);
    CHECK(n == 1);
    NatterMessage m;
    EXPECT(natter_message_list_get(page, 0, &m), NATTER_OK);
    EXPECT(natter_message_list_get(page, 1, &m), NATTER_INVALID_ARGUMENT);
    CHECK(strcmp(m.id.hex, id.hex) == 0 && strcmp(m.author, "dave") == 0);
    CHECK(strcmp(m.with, "dave") == 0 && strcmp(m.text, "lunch at 1?") == 0 && !m.outgoing);
    CHECK(m.reply_to.hex[0] == 0 && m.status == NATTER_MESSAGE_RECEIVED && m.sent_at > 0);
    EXPECT(natter_message_list_free(page), NATTER_OK);
    EXPECT(natter_message_list_free(page), NATTER_INVALID_HANDLE);
    EXPECT(natter_client_search_messages(laptop, "LUNCH", 5, &page), NATTER_OK);
    EXPECT(natter_message_list_count(page, &n), NATTER_OK);
    CHECK(n == 1);
    EXPECT(natter_message_list_get(page, 0, &m), NATTER_OK);
    CHECK(m.outgoing && m.status == NATTER_MESSAGE_DELIVERED && strcmp(m.with, "erin") == 0);
    EXPECT(natter_message_list_free(page), NATTER_OK);
    EXPECT(natter_client_history(erin, "dave", "0123", 10, &page), NATTER_INVALID_ARGUMENT);
    printf("dave's message reached erin and came back delivered\n");

    EXPECT(natter_client_set_presence(erin, NATTER_AVAILABILITY_INVISIBLE, NULL), NATTER_OK);
    if ((seen = next_of(laptop, NATTER_EVENT_CONTACT_PRESENCE))) {
        CHECK(strcmp(seen->user, "erin") == 0 && seen->code == NATTER_AVAILABILITY_OFFLINE);
        printf("%s\n", seen->detail);
        natter_event_free(seen);
    } else {
        CHECK(seen != NULL);
    }

    natter_client_free(erin);
    natter_client_free(laptop);
    natter_client_free(phone);
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("contacts: all checks passed\n");
    return 0;
}
