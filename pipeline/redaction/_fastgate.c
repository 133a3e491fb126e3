/* The redaction gate's common case in C: an optional accelerator of pipeline/redaction/fast.py.
 *
 * common_case(event) -> bool answers True only when the full gate (gate.gate_event) would return
 * the event itself, so its plain encoding is the gated encoding. It answers for the plain case
 * only and says False (the Python walk decides) for anything else:
 *
 *   - the memo is synced to the secret registry (SYNCED[0] == registry.STATE["generation"]) and
 *     no registered value is id-shaped or short (RISKY_FORMS is empty), so a string made of
 *     CLEAN_CHARS alone or shorter than 6 characters cannot hold anything the passes rewrite;
 *   - the event and its parts are exactly the Event, Source, WorkspaceRef, Actor and Target
 *     types given to configure(), with no change;
 *   - every identity, actor and target field is None or an exact str that is short, made of
 *     CLEAN_CHARS alone, or in the memo (strings the passes already left unchanged);
 *   - attributes and raw are exact dicts whose every key is an exact str in NAMES (clean, not
 *     secret-named, not a headers name) and whose every value is None, an exact number, such a
 *     string, or an empty map, list or tuple. A map whose keys are the very objects, in the same
 *     order, of a map found so during the current NAMES_EPOCH needs no lookup for them.
 *
 * It reads the fields from the structs' slots (offsets taken from their member descriptors once)
 * and runs no Python code, so nothing can change under it. tests/unit/test_redaction_native.py
 * checks on generated events with planted secrets that True always means the gate leaves the
 * event as it is, and that it decides every event the Python common case decides.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

static unsigned char clean_table[128];

/* The struct types configure() was given, and the byte offset of each field read here (msgspec
 * Structs keep their fields in slots: member descriptors with a fixed offset). */
enum { EV_TIME, EV_SOURCE, EV_TYPE, EV_OBSERVED_AT, EV_WORKSPACE, EV_ACTOR, EV_TARGET, EV_CHANGE, EV_ATTRIBUTES, EV_RAW, N_EV };
enum { SRC_RECORD_ID, SRC_STREAM, N_SRC };
enum { WS_ID, WS_NAME, N_WS };
enum { A_USER_ID, A_USER_NAME, A_API_KEY_ID, A_IP, A_USER_AGENT, N_A };
enum { T_KIND, T_ID, T_NAME, N_T };
static PyTypeObject *event_type, *source_type, *workspace_type, *actor_type, *target_type;
static PyObject *g_memo, *g_names, *g_names_epoch, *g_synced, *g_state, *g_risky, *s_generation;

/* Key layouts of maps whose every key was found in NAMES during the current names epoch (NAMES
 * only grows within one): a map with the same key objects in the same order needs no lookup.
 * The normalizers build their maps from literal keys and orjson's cached keys, so a stream has
 * a few layouts. Bounded; replaced round robin; all forgotten when the epoch moves. */
#define LAYOUTS 8
#define LAYOUT_KEYS 48
typedef struct {
    Py_ssize_t n;
    PyObject *keys[LAYOUT_KEYS];
} Layout;
static Layout layouts[LAYOUTS];
static int next_layout;
static long long layout_epoch = -1;

static void forget_layouts(void) {
    for (int i = 0; i < LAYOUTS; i++) {
        for (Py_ssize_t j = 0; j < layouts[i].n; j++) Py_CLEAR(layouts[i].keys[j]);
        layouts[i].n = 0;
    }
}

/* The layout whose size and first key are the map's, or NULL. */
static Layout *find_layout(PyObject *d) {
    Py_ssize_t n = PyDict_GET_SIZE(d), pos = 0;
    PyObject *k, *v;
    if (n == 0 || n > LAYOUT_KEYS || !PyDict_Next(d, &pos, &k, &v)) return NULL;
    for (int i = 0; i < LAYOUTS; i++) {
        if (layouts[i].n == n && layouts[i].keys[0] == k) return &layouts[i];
    }
    return NULL;
}

static void store_layout(PyObject *const *keys, Py_ssize_t n) {
    Layout *lay = &layouts[next_layout];
    next_layout = (next_layout + 1) % LAYOUTS;
    for (Py_ssize_t j = 0; j < lay->n; j++) Py_CLEAR(lay->keys[j]);
    for (Py_ssize_t j = 0; j < n; j++) {
        Py_INCREF(keys[j]);
        lay->keys[j] = keys[j];
    }
    lay->n = n;
}
static Py_ssize_t ev_off[N_EV], src_off[N_SRC], ws_off[N_WS], a_off[N_A], t_off[N_T];

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

/* 1 when every character of an exact, ready str is ASCII and in the clean table. */
static int all_clean(PyObject *s) {
    if (!PyUnicode_IS_ASCII(s)) return 0;
    const unsigned char *p = (const unsigned char *)PyUnicode_DATA(s);
    Py_ssize_t n = PyUnicode_GET_LENGTH(s);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (!clean_table[p[i]]) return 0;
    }
    return 1;
}

/* 1 contained, 0 not, -1 error (TypeError, an unhashable value, cleared into 0). */
static int in_set(PyObject *set, PyObject *v) {
    int r = PySet_Contains(set, v);
    if (r < 0 && PyErr_ExceptionMatches(PyExc_TypeError)) {
        PyErr_Clear();
        return 0;
    }
    return r;
}

#define SEEN 24

/* One decision: the memo and names, and the fresh strings this event already showed to be made of
 * CLEAN_CHARS (the normalizers share one string object between raw, actor and attributes: each
 * is scanned once). */
typedef struct {
    PyObject *memo, *names;
    PyObject *seen[SEEN];
    int nseen;
} Check;

/* An exact str the full gate leaves as it is: shorter than 6 characters or made of CLEAN_CHARS
 * alone (clean_text returns such a string itself once no registered value can hide in it, which
 * common_case checked: RISKY_FORMS is empty), or one the memo holds. 1 yes, 0 no, -1 error. */
static int str_ok(Check *c, PyObject *v) {
#if PY_VERSION_HEX < 0x030C0000
    if (PyUnicode_READY(v) < 0) return -1;
#endif
    if (PyUnicode_GET_LENGTH(v) < 6) return 1;
    if (((PyASCIIObject *)v)->hash != -1) {
        /* hashed before: a repeated value, likely the memo's own object (one probe) */
        int r = in_set(c->memo, v);
        return r == 0 ? all_clean(v) : r;
    }
    /* a fresh string: an id, a time or an address is judged without hashing it, once per event */
    for (int i = 0; i < c->nseen; i++) {
        if (c->seen[i] == v) return 1;
    }
    if (all_clean(v)) {
        if (c->nseen < SEEN) c->seen[c->nseen++] = v;
        return 1;
    }
    return in_set(c->memo, v);
}

/* A struct field: None or a clean exact str (anything else: Python decides). */
static int field_ok(Check *c, PyObject *v) {
    if (v == Py_None) return 1;
    if (v == NULL || !PyUnicode_CheckExact(v)) return 0;
    return str_ok(c, v);
}

/* Every listed slot of obj a clean field. */
static int slots_ok(Check *c, PyObject *obj, const Py_ssize_t *offs, int count) {
    for (int i = 0; i < count; i++) {
        int r = field_ok(c, SLOT(obj, offs[i]));
        if (r != 1) return r;
    }
    return 1;
}

/* Every key an exact str in names; every value None, an exact number (never rewritten), a clean
 * exact str, or an empty map, list or tuple (nothing to redact). Anything else: 0, the walk decides. */
static int map_ok(Check *c, PyObject *d) {
    Py_ssize_t pos = 0, i = 0, n = PyDict_GET_SIZE(d);
    PyObject *k, *v, *keys[LAYOUT_KEYS];
    Layout *lay = find_layout(d);
    int same = lay != NULL; /* every key so far is the layout's, in order: known without a lookup */
    while (PyDict_Next(d, &pos, &k, &v)) {
        /* exact types only: nothing here runs Python code, so the map cannot change under the loop */
        if (!PyUnicode_CheckExact(k)) return 0;
        int r;
        if (!(same && lay->keys[i] == k)) {
            same = 0;
            if ((r = in_set(c->names, k)) != 1) return r;
        }
        if (i < LAYOUT_KEYS) keys[i] = k;
        i++;
        if (v == Py_None || PyLong_CheckExact(v) || PyFloat_CheckExact(v) || PyBool_Check(v)) continue;
        if (PyUnicode_CheckExact(v)) {
            if ((r = str_ok(c, v)) != 1) return r;
            continue;
        }
        if ((PyDict_CheckExact(v) && PyDict_GET_SIZE(v) == 0) || (PyList_CheckExact(v) && PyList_GET_SIZE(v) == 0) ||
            (PyTuple_CheckExact(v) && PyTuple_GET_SIZE(v) == 0))
            continue; /* empty: nothing to redact */
        return 0;     /* a non-empty map or list, or a subclass: the walk decides */
    }
    if (!same && n > 0 && n <= LAYOUT_KEYS) store_layout(keys, n);
    return 1;
}

static int decide(PyObject *event, PyObject *memo, PyObject *names) {
    if (event_type == NULL || Py_TYPE(event) != event_type) return 0;
    PyObject *attrs = SLOT(event, ev_off[EV_ATTRIBUTES]), *raw = SLOT(event, ev_off[EV_RAW]);
    if (SLOT(event, ev_off[EV_CHANGE]) != Py_None || attrs == NULL || raw == NULL) return 0;
    if (!PyDict_CheckExact(attrs) || (raw != Py_None && !PyDict_CheckExact(raw))) return 0;
    PyObject *src = SLOT(event, ev_off[EV_SOURCE]), *ws = SLOT(event, ev_off[EV_WORKSPACE]);
    PyObject *a = SLOT(event, ev_off[EV_ACTOR]), *t = SLOT(event, ev_off[EV_TARGET]);
    if (src == NULL || ws == NULL || a == NULL || t == NULL) return 0;
    if (Py_TYPE(src) != source_type || Py_TYPE(ws) != workspace_type) return 0;
    if ((a != Py_None && Py_TYPE(a) != actor_type) || (t != Py_None && Py_TYPE(t) != target_type)) return 0;
    PyObject *time = SLOT(event, ev_off[EV_TIME]), *rid = SLOT(src, src_off[SRC_RECORD_ID]);
    if (time == NULL || rid == NULL || !PyUnicode_CheckExact(time) || !PyUnicode_CheckExact(rid)) return 0;
    Check c;
    c.memo = memo;
    c.names = names;
    c.nseen = 0;
    int r;
    static const int ev_fields[] = {EV_TIME, EV_TYPE, EV_OBSERVED_AT};
    for (int i = 0; i < 3; i++) {
        if ((r = field_ok(&c, SLOT(event, ev_off[ev_fields[i]]))) != 1) return r;
    }
    if ((r = slots_ok(&c, src, src_off, N_SRC)) != 1) return r;
    if ((r = slots_ok(&c, ws, ws_off, N_WS)) != 1) return r;
    if (a != Py_None && (r = slots_ok(&c, a, a_off, N_A)) != 1) return r;
    if (t != Py_None && (r = slots_ok(&c, t, t_off, N_T)) != 1) return r;
    if ((r = map_ok(&c, attrs)) != 1) return r;
    if (raw != Py_None) return map_ok(&c, raw);
    return 1;
}

static PyObject *common_case(PyObject *Py_UNUSED(self), PyObject *event) {
    if (g_memo == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_fastgate.configure() was not called");
        return NULL;
    }
    /* the memo answers for the registry generation it was synced to, and only when no registered
     * value can hide in an id-shaped string (RISKY_FORMS empty): otherwise Python decides */
    if (PyList_GET_SIZE(g_risky) != 0 || PyList_GET_SIZE(g_synced) != 1 || PyList_GET_SIZE(g_names_epoch) != 1)
        Py_RETURN_FALSE;
    PyObject *gen = PyDict_GetItemWithError(g_state, s_generation);
    if (gen == NULL) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_FALSE;
    }
    int same = PyObject_RichCompareBool(gen, PyList_GET_ITEM(g_synced, 0), Py_EQ);
    if (same < 0) return NULL;
    if (!same) Py_RETURN_FALSE;
    long long epoch = PyLong_AsLongLong(PyList_GET_ITEM(g_names_epoch, 0));
    if (epoch == -1 && PyErr_Occurred()) return NULL;
    if (epoch != layout_epoch) {
        forget_layouts();
        layout_epoch = epoch;
    }
    int r = decide(event, g_memo, g_names);
    if (r < 0) return NULL;
    return PyBool_FromLong(r);
}

/* The offsets of the named fields of a struct type (member descriptors holding objects). */
static int offsets(PyTypeObject *type, const char *const *fields, int count, Py_ssize_t *out) {
    for (int i = 0; i < count; i++) {
        PyObject *d = PyDict_GetItemString(type->tp_dict, fields[i]);
        if (d == NULL || !Py_IS_TYPE(d, &PyMemberDescr_Type)) {
            PyErr_Format(PyExc_TypeError, "%s.%s is not a slot", type->tp_name, fields[i]);
            return -1;
        }
        PyMemberDef *m = ((PyMemberDescrObject *)d)->d_member;
        if (m->type != T_OBJECT_EX && m->type != T_OBJECT) {
            PyErr_Format(PyExc_TypeError, "%s.%s does not hold an object", type->tp_name, fields[i]);
            return -1;
        }
        out[i] = m->offset;
    }
    return 0;
}

static PyObject *configure(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *ev, *src, *ws, *a, *t, *memo, *names, *epoch, *synced, *state, *risky, *clean;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!O!O!O!O!O!O!U", &PyType_Type, &ev, &PyType_Type, &src, &PyType_Type,
                          &ws, &PyType_Type, &a, &PyType_Type, &t, &PySet_Type, &memo, &PySet_Type, &names,
                          &PyList_Type, &epoch, &PyList_Type, &synced, &PyDict_Type, &state, &PyList_Type, &risky,
                          &clean))
        return NULL;
    if (!PyUnicode_IS_ASCII(clean)) {
        PyErr_SetString(PyExc_ValueError, "configure: the clean characters must be ASCII");
        return NULL;
    }
    static const char *const ev_f[] = {"time",  "source", "type",       "observed_at", "workspace",
                                       "actor", "target", "change", "attributes",  "raw"};
    static const char *const src_f[] = {"record_id", "stream"};
    static const char *const ws_f[] = {"id", "name"};
    static const char *const a_f[] = {"user_id", "user_name", "api_key_id", "ip", "user_agent"};
    static const char *const t_f[] = {"kind", "id", "name"};
    if (offsets((PyTypeObject *)ev, ev_f, N_EV, ev_off) || offsets((PyTypeObject *)src, src_f, N_SRC, src_off) ||
        offsets((PyTypeObject *)ws, ws_f, N_WS, ws_off) || offsets((PyTypeObject *)a, a_f, N_A, a_off) ||
        offsets((PyTypeObject *)t, t_f, N_T, t_off))
        return NULL;
    /* the types stay alive as long as this module (they are module-level classes); keep a reference */
    Py_INCREF(ev);
    Py_INCREF(src);
    Py_INCREF(ws);
    Py_INCREF(a);
    Py_INCREF(t);
    Py_XDECREF(event_type);
    Py_XDECREF(source_type);
    Py_XDECREF(workspace_type);
    Py_XDECREF(actor_type);
    Py_XDECREF(target_type);
    event_type = (PyTypeObject *)ev;
    source_type = (PyTypeObject *)src;
    workspace_type = (PyTypeObject *)ws;
    actor_type = (PyTypeObject *)a;
    target_type = (PyTypeObject *)t;
    PyObject *refs[] = {memo, names, epoch, synced, state, risky};
    PyObject **slots[] = {&g_memo, &g_names, &g_names_epoch, &g_synced, &g_state, &g_risky};
    forget_layouts();
    layout_epoch = -1;
    for (int i = 0; i < 6; i++) {
        Py_INCREF(refs[i]);
        Py_XSETREF(*slots[i], refs[i]);
    }
    memset(clean_table, 0, sizeof clean_table);
    const unsigned char *p = (const unsigned char *)PyUnicode_DATA(clean);
    for (Py_ssize_t i = 0; i < PyUnicode_GET_LENGTH(clean); i++) clean_table[p[i]] = 1;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"common_case", common_case, METH_O, "common_case(event) -> bool"},
    {"configure", configure, METH_VARARGS, "configure(Event, Source, WorkspaceRef, Actor, Target, memo, names, names_epoch, synced, state, risky, clean_chars)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fastgate", "The redaction gate's common case in C.", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__fastgate(void) {
    if ((s_generation = PyUnicode_InternFromString("generation")) == NULL) return NULL;
    return PyModule_Create(&module);
}
