/* The account from C: a user on two devices lists them, cannot revoke the device asking,
 * is told a wrong password and an unknown device apart, changes the password revoking the
 * other device, and that device is then out: its old password is wrong and its
 * certificate is refused.
 *
 *   account NETWORK_FILE DATA_DIR      (a login server must be running)
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "natter.h"
#include "check.h"

/* The network file's contents, for a client set up from memory. */
static char network_text[16384];

static NatterClient *client(const char *network, const char *root, const char *name) {
    char dir[1024];
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    NatterOptions o;
    EXPECT(natter_options_default(&o, NATTER_OPTIONS_VERSION), NATTER_OK);
    /* The laptop reads the network file; the phone gets its contents, as an app that ships
       the description inside itself would. */
    if (strcmp(name, "phone") == 0) {
        FILE *f = fopen(network, "r");
        if (!f) return NULL;
        size_t n = fread(network_text, 1, sizeof network_text - 1, f);
        fclose(f);
        network_text[n] = 0;
        o.network_toml = network_text;
    } else {
        o.network_file = network;
    }
    o.data_dir = dir;
    o.listen = "127.0.0.1:0";
    o.audio = NATTER_AUDIO_APP;
    NatterClient *c = NULL;
    EXPECT(natter_client_new(&o, &c), NATTER_OK);
    return c;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: account NETWORK_FILE DATA_DIR\n");
        return 2;
    }
    const char *old_password = "carol's first password", *new_password = "carol's second one!";
    NatterClient *laptop = client(argv[1], argv[2], "laptop");
    NatterClient *phone = client(argv[1], argv[2], "phone");
    if (!laptop || !phone) return 1;
    EXPECT(natter_client_register(laptop, "carol", old_password), NATTER_OK);
    EXPECT(natter_client_login(laptop, "carol", old_password), NATTER_OK);
    EXPECT(natter_client_login(phone, "carol", old_password), NATTER_OK);

    /* Two devices: too small a buffer says how many, then the whole list. */
    NatterAccountDevice devices[4];
    size_t n = 0;
    EXPECT(natter_client_devices(laptop, devices, 1, &n), NATTER_BUFFER_TOO_SMALL);
    CHECK(n == 2);
    EXPECT(natter_client_devices(laptop, devices, 4, &n), NATTER_OK);
    CHECK(n == 2);
    int mine = -1, other = -1;
    for (size_t i = 0; i < n && i < 4; i++) {
        CHECK(devices[i].revoked_at == 0 && devices[i].first_seen > 0);
        CHECK(strlen(devices[i].id_text) == 12);
        if (devices[i].this_device) mine = (int)i; else other = (int)i;
    }
    CHECK(mine >= 0 && other >= 0);
    if (mine < 0 || other < 0) return 1;
    printf("devices: %s (this one), %s\n", devices[mine].id_text, devices[other].id_text);

    /* Reasons, not just failure. */
    uint8_t unknown[16];
    memset(unknown, 0x5a, sizeof unknown);
    EXPECT(natter_client_revoke_device(laptop, devices[mine].id, old_password), NATTER_THIS_DEVICE);
    EXPECT(natter_client_revoke_device(laptop, unknown, old_password), NATTER_UNKNOWN_DEVICE);
    EXPECT(natter_client_revoke_device(laptop, devices[other].id, "not carol's password"),
           NATTER_WRONG_PASSWORD);
    char why[256];
    size_t why_len = 0;
    EXPECT(natter_last_error_message(why, sizeof why, &why_len), NATTER_OK);
    CHECK(strcmp(why, "wrong password") == 0);
    EXPECT(natter_client_change_password(laptop, "not carol's password", new_password, true),
           NATTER_WRONG_PASSWORD);
    EXPECT(natter_client_change_password(laptop, old_password, "short", true), NATTER_WEAK_PASSWORD);

    /* The password leaked: change it and revoke every other device. */
    EXPECT(natter_client_change_password(laptop, old_password, new_password, true), NATTER_OK);
    EXPECT(natter_client_devices(laptop, devices, 4, &n), NATTER_OK);
    CHECK(n == 2);
    for (size_t i = 0; i < n && i < 4; i++) {
        CHECK(devices[i].this_device ? devices[i].revoked_at == 0 : devices[i].revoked_at > 0);
    }
    printf("password changed, other device revoked\n");

    /* The phone is out: its certificate is refused, the old password is wrong, and the new
       one finds it revoked. */
    EXPECT(natter_client_devices(phone, devices, 4, &n), NATTER_REVOKED);
    EXPECT(natter_client_login(phone, "carol", old_password), NATTER_WRONG_PASSWORD);
    EXPECT(natter_client_login(phone, "carol", new_password), NATTER_REVOKED);
    EXPECT(natter_client_login(laptop, "carol", new_password), NATTER_OK);

    /* Logging out forgets the certificate: the next login needs the password. */
    EXPECT(natter_client_logout(laptop), NATTER_OK);
    EXPECT(natter_client_logout(laptop), NATTER_NOT_LOGGED_IN);
    EXPECT(natter_client_devices(laptop, devices, 4, &n), NATTER_NOT_LOGGED_IN);
    EXPECT(natter_client_login(laptop, "carol", NULL), NATTER_PASSWORD_NEEDED);
    EXPECT(natter_client_login(laptop, "carol", new_password), NATTER_OK);

    natter_client_free(laptop);
    natter_client_free(phone);
    if (failures) {
        fprintf(stderr, "%d failures\n", failures);
        return 1;
    }
    printf("account: all checks passed\n");
    return 0;
}
